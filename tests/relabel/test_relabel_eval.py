"""Tests of pipeline.relabel.evaluation: COCO mask AP, label-map mIoU and mBA (hand-checked numbers)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline import metrics
from pipeline.relabel.evaluation import (
    coco_ap_before_after,
    coco_mask_ap,
    labelmap_counts,
    labelmap_mba,
    miou,
)

H, W = 150, 200
SHIFT = (3, 4)  # (dy, dx) applied to every predicted mask in the "shifted" cases
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


# ---------------------------------------------------------------------------------------------------------
# synthetic COCO ground truth: 2 images 200x150, 2 categories, one object of each category per image


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def rect_poly(r0: int, r1: int, c0: int, c1: int) -> list[list[float]]:
    """Polygon that pycocotools rasterises to rows r0:r1, cols c0:c1 (checked in test_fixture_polygons)."""
    return [[c0, r0, c1, r0, c1, r1, c0, r1]]


def disk() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (150, 100), 30, 1, -1)
    return m.astype(bool)


def rle_str(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as it comes out of a JSON file."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def rle_bytes(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [H, W], "counts": runs}


def shift(mask: np.ndarray, dy: int = SHIFT[0], dx: int = SHIFT[1]) -> np.ndarray:
    out = np.zeros_like(mask)
    out[dy:, dx:] = mask[: H - dy, : W - dx]
    return out


# (image_id, category_id, mask, rect or None, distinct score for the shifted predictions)
OBJECTS = [
    (1, 1, rect(20, 60, 30, 90), (20, 60, 30, 90), 0.9),  # A: 2400 px, medium
    (1, 2, disk(), None, 0.8),  # B: 2821 px, medium
    (2, 1, rect(10, 140, 10, 110), (10, 140, 10, 110), 0.7),  # C: 13000 px, large
    (2, 2, rect(20, 45, 150, 180), (20, 45, 150, 180), 0.6),  # D: 750 px, small
]


def make_gt(crowd: bool = False) -> dict:
    """Rectangles as hand-written polygons, the disk as str-count RLE; annotation ids start at 0 (COCOeval
    treats a matched gt id 0 as unmatched: evaluation must re-number)."""
    anns = []
    for i, (img, cat, mask, box, _) in enumerate(OBJECTS):
        segm = rect_poly(*box) if box else rle_str(mask)
        anns.append({"id": i, "image_id": img, "category_id": cat, "segmentation": segm,
                     "area": float(mask.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
    if crowd:  # a crowd of category 1 in image 1, rows 100:140, cols 10:60, as uncompressed RLE (COCO's way)
        m = rect(100, 140, 10, 60)
        anns.append({"id": len(anns), "image_id": 1, "category_id": 1, "segmentation": rle_uncompressed(m),
                     "area": float(m.sum()), "bbox": [10, 100, 50, 40], "iscrowd": 1})
    return {
        "images": [{"id": 1, "height": H, "width": W, "file_name": "a.png"},
                   {"id": 2, "height": H, "width": W, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "thing"}],
        "annotations": anns,
    }


def perfect_predictions(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": copy.deepcopy(a["segmentation"]), "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]


def shifted_predictions(fmt: str = "str") -> list[dict]:
    encode = {"str": rle_str, "bytes": rle_bytes, "uncompressed": rle_uncompressed}
    preds = []
    for img, cat, mask, box, score in OBJECTS:
        if fmt == "polygon" and box:
            r0, r1, c0, c1 = box
            segm = rect_poly(r0 + SHIFT[0], r1 + SHIFT[0], c0 + SHIFT[1], c1 + SHIFT[1])
        else:
            segm = encode.get(fmt, rle_str)(shift(mask))
        preds.append({"image_id": img, "category_id": cat, "segmentation": segm, "score": score})
    return preds


# ---------------------------------------------------------------------------------------------------------
# COCO's AP, written out by hand for one detection per ground-truth object (no crowd, one area range)


def ap_101(tp: list[bool], n_gt: int) -> float:
    """101-point interpolated AP of detections sorted by descending score (tp: matched or not)."""
    flags = np.array(tp, bool)
    tps, fps = np.cumsum(flags), np.cumsum(~flags)
    rc, pr = tps / n_gt, tps / (tps + fps)
    for i in range(len(pr) - 1, 0, -1):  # precision envelope
        pr[i - 1] = max(pr[i - 1], pr[i])
    idx = np.searchsorted(rc, np.linspace(0, 1, 101), side="left")
    return float(np.mean([pr[i] if i < len(pr) else 0.0 for i in idx]))


def hand_ap(ious_by_cat: dict[int, list[tuple[float, float]]], thresholds: np.ndarray) -> tuple[float, float]:
    """(AP, AR) x100 over thresholds and categories; ious_by_cat: {cat: [(score, IoU with its own gt)]}.

    Each detection overlaps only its own object, so at threshold t it is a TP iff IoU >= t.
    """
    aps, ars = [], []
    for t in thresholds:
        for dets in ious_by_cat.values():
            ordered = sorted(dets, key=lambda d: -d[0])
            tp = [iou >= t for _, iou in ordered]
            aps.append(ap_101(tp, len(dets)))
            ars.append(sum(tp) / len(dets))
    return 100 * float(np.mean(aps)), 100 * float(np.mean(ars))


def shifted_ious() -> dict[int, list[tuple[float, float]]]:
    out: dict[int, list[tuple[float, float]]] = {}
    for _, cat, mask, _, score in OBJECTS:
        s = shift(mask)
        out.setdefault(cat, []).append((score, (mask & s).sum() / (mask | s).sum()))
    return out


# ---------------------------------------------------------------------------------------------------------
# coco_mask_ap


def test_fixture_polygons():
    for _, _, mask, box, _ in OBJECTS:
        if box:
            poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(rect_poly(*box), H, W)))
            np.testing.assert_array_equal(poly.astype(bool), mask)
    # the hand check below relies on these IoUs: all > 0.5, none within 0.005 of a COCO threshold
    ious = [iou for dets in shifted_ious().values() for _, iou in dets]
    assert sorted(round(v, 4) for v in ious) == [0.6164, 0.7595, 0.8072, 0.883]


def test_perfect_predictions_give_100():
    gt = make_gt()
    res = coco_mask_ap(gt, perfect_predictions(gt))
    # approx: COCOeval's precision is tp / (tp + fp + eps), so "100" can come out as 99.99999999999997
    assert res == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "APs": 100.0, "APm": 100.0,
                                 "APl": 100.0, "AR100": 100.0, "n_predictions": 4, "n_dropped": 0}, abs=1e-9)
    assert isinstance(res["n_predictions"], int) and isinstance(res["n_dropped"], int)


def test_shifted_predictions_match_hand_check():
    gt = make_gt()
    res = coco_mask_ap(gt, shifted_predictions())
    ious = shifted_ious()
    ap, ar = hand_ap(ious, np.linspace(0.5, 0.95, 10))
    assert res["AP"] < 99.0
    assert res["AP"] == pytest.approx(ap, abs=1e-9)
    assert res["AR100"] == pytest.approx(ar, abs=1e-9)
    assert all(iou > 0.5 for dets in ious.values() for _, iou in dets)
    assert res["AP50"] == pytest.approx(100.0)  # every IoU > 0.5: all matched, no false positive
    # at 0.75, object D (IoU 0.616, category 2, lowest score) is missed: category 2 gets [TP, FP] of 2 gt
    # -> precision 1 up to recall 0.5 (51 of 101 points), category 1 stays 100
    assert res["AP75"] == pytest.approx(hand_ap(ious, np.array([0.75]))[0], abs=1e-9)
    assert res["AP75"] == pytest.approx(100 * (1 + 51 / 101) / 2, abs=1e-9)
    assert res["n_predictions"] == 4 and res["n_dropped"] == 0


def test_empty_prediction_list_gives_zero():
    # COCOeval: with ground truth but no detection, precision and recall are 0 (not -1)
    res = coco_mask_ap(make_gt(), [])
    assert res == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0,
                   "AR100": 0.0, "n_predictions": 0, "n_dropped": 0}


def test_area_range_without_ground_truth_is_none():
    gt = make_gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 32**2]  # drop the small object D
    res = coco_mask_ap(gt, perfect_predictions(gt))
    assert res["APs"] is None
    assert [res[k] for k in ("AP", "APm", "APl")] == pytest.approx([100.0] * 3, abs=1e-9)


@pytest.mark.parametrize("fmt", ["bytes", "uncompressed", "polygon"])
def test_prediction_formats_agree(fmt):
    gt = make_gt()
    ref = coco_mask_ap(gt, shifted_predictions("str"))
    assert ref["AP"] < 99.0
    assert coco_mask_ap(gt, shifted_predictions(fmt)) == ref


def test_ground_truth_formats_agree():
    gt = make_gt()
    ref = coco_mask_ap(gt, shifted_predictions())
    for encode in (rle_bytes, rle_uncompressed, rle_str):
        other = copy.deepcopy(gt)
        for ann, (_, _, mask, _, _) in zip(other["annotations"], OBJECTS):
            ann["segmentation"] = encode(mask)
        assert coco_mask_ap(other, shifted_predictions()) == ref


def test_prediction_bbox_ignored_area_from_mask():
    # COCO.loadRes would take a given bbox's area as the detection's area (which decides the area range
    # of unmatched detections); here the area always comes from the mask
    gt = make_gt()
    ref = coco_mask_ap(gt, shifted_predictions())
    boxed = [{**p, "bbox": [0, 0, W, H]} for p in shifted_predictions()]
    assert coco_mask_ap(gt, boxed) == ref


def test_inputs_not_modified():
    gt, preds = make_gt(crowd=True), shifted_predictions("polygon")
    gt0, preds0 = copy.deepcopy(gt), copy.deepcopy(preds)
    coco_mask_ap(gt, preds)
    assert gt == gt0 and preds == preds0


def test_unknown_image_and_category_dropped_and_counted():
    gt = make_gt()
    stray = {"image_id": 999, "category_id": 1, "segmentation": rle_str(rect(0, 50, 0, 50)), "score": 1.0}
    res = coco_mask_ap(gt, [*perfect_predictions(gt), stray])
    assert res["AP"] == pytest.approx(100.0) and res["n_predictions"] == 4 and res["n_dropped"] == 1
    other_cat = {**stray, "image_id": 1, "category_id": 7}
    res = coco_mask_ap(gt, [*perfect_predictions(gt), stray, other_cat])
    assert res["AP"] == pytest.approx(100.0) and res["n_predictions"] == 4 and res["n_dropped"] == 2


def test_crowd_prediction_dropped():
    gt = make_gt()
    extra = {"image_id": 1, "category_id": 1, "segmentation": rle_str(rect(100, 140, 10, 60)), "score": 1.0}
    # control: as an ordinary detection the extra mask is a false positive (tied at score 1, ranked before
    # image 2's true positive of category 1): AP 91.7
    assert coco_mask_ap(gt, [*perfect_predictions(gt), extra])["AP"] < 99.0
    res = coco_mask_ap(gt, [*perfect_predictions(gt), {**extra, "iscrowd": 1}])
    assert res["AP"] == pytest.approx(100.0) and res["n_predictions"] == 4 and res["n_dropped"] == 1


def test_crowd_ground_truth_region_is_not_a_false_positive():
    inside = {"image_id": 1, "category_id": 1, "segmentation": rle_str(rect(105, 135, 15, 55)), "score": 1.0}
    with_crowd = make_gt(crowd=True)
    res = coco_mask_ap(with_crowd, [*perfect_predictions(with_crowd), inside])
    assert res["AP"] == pytest.approx(100.0) and res["AR100"] == pytest.approx(100.0)
    assert res["n_predictions"] == 5
    # without the crowd region the same detection is a false positive (AP 91.7, test_crowd_prediction_dropped)
    no_crowd = make_gt(crowd=False)
    assert coco_mask_ap(no_crowd, [*perfect_predictions(no_crowd), inside])["AP"] < 99.0


def test_rle_of_wrong_size_rejected():
    gt = make_gt()
    bad = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    with pytest.raises(ValueError, match="size"):
        coco_mask_ap(gt, [{"image_id": 1, "category_id": 1, "segmentation": bad}])


def test_score_defaults_to_one():
    gt = make_gt()
    preds = [{k: v for k, v in p.items() if k != "score"} for p in perfect_predictions(gt)]
    assert coco_mask_ap(gt, preds)["AP"] == pytest.approx(100.0)


def test_before_after():
    gt = make_gt()
    res = coco_ap_before_after(gt, shifted_predictions(), perfect_predictions(gt))
    assert set(res) == {"before", "after"}
    assert res["before"] == coco_mask_ap(gt, shifted_predictions())
    assert res["after"]["AP"] == pytest.approx(100.0) and res["before"]["AP"] < res["after"]["AP"]


# ---------------------------------------------------------------------------------------------------------
# label maps: counts and mIoU

IGN = 255

GT_A = np.array([[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [IGN, IGN, 1, 1]])
PRED_A = np.array([[0, 0, 0, 1],
                   [0, 0, 0, 1],
                   [0, 0, 1, 1],
                   [1, 1, 1, 1]])  # the two 1s in the bottom-left lie on ignore pixels
GT_B = np.array([[1, 0, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])
PRED_B = np.zeros((4, 4), np.int64)


def test_labelmap_counts_hand_checked():
    # class 0: gt 6 px, pred 8 px (6 + 2 of gt's class 1), all 6 gt px hit; class 1: gt 8, pred 6 valid
    assert labelmap_counts(PRED_A, GT_A, IGN) == {0: (6, 8), 1: (6, 8)}
    assert labelmap_counts(PRED_B, GT_B, IGN) == {0: (15, 16), 1: (0, 1)}
    # ignore=None: 255 is an ordinary class (2 gt px, no pred), and the pred 1s there count
    assert labelmap_counts(PRED_A, GT_A, None) == {0: (6, 8), 1: (6, 10), 255: (0, 2)}


def test_labelmap_counts_pred_only_class_and_pred_ignore_value():
    gt = np.array([[0, 0], [1, IGN]], np.uint8)
    pred = np.array([[3, IGN], [1, 3]], np.uint8)  # 3 only in pred; 255 in pred on a valid pixel
    assert labelmap_counts(pred, gt, IGN) == {0: (0, 2), 1: (1, 1), 3: (0, 1)}


def test_labelmap_counts_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        labelmap_counts(np.zeros((4, 4), int), np.zeros((4, 5), int), None)
    with pytest.raises(ValueError, match="integer"):
        labelmap_counts(np.zeros((4, 4), float), np.zeros((4, 4), int), None)


def test_miou_sums_counts_over_images_before_dividing():
    res = miou([labelmap_counts(PRED_A, GT_A, IGN), labelmap_counts(PRED_B, GT_B, IGN)])
    # class 0: (6 + 15) / (8 + 16) = 0.875; class 1: (6 + 0) / (8 + 1) = 2/3
    assert res["per_class"] == pytest.approx({0: 87.5, 1: 200 / 3})
    assert res["miou"] == pytest.approx((87.5 + 200 / 3) / 2)  # 77.083...
    # the mean of per-image IoUs would be different: class 1 (0.75 + 0) / 2, mIoU 60.9
    per_image = np.mean([(6 / 8 + 6 / 8) / 2, (15 / 16 + 0) / 2]) * 100
    assert abs(res["miou"] - per_image) > 10


def test_miou_edge_cases():
    assert miou([]) == {"miou": None, "per_class": {}}
    res = miou([{0: (0, 0), 1: (2, 4)}])
    assert res == {"miou": 50.0, "per_class": {0: None, 1: 50.0}}
    with pytest.raises(ValueError):
        miou([{0: (3, 2)}])


# ---------------------------------------------------------------------------------------------------------
# label maps: mBA (metrics.mba scale: [0, 1])


def square_maps() -> tuple[np.ndarray, np.ndarray]:
    """10x10, class 1 = rows 3:7 x cols 3:7 in gt; pred = that square eroded by one pixel (2x2)."""
    gt = np.zeros((10, 10), np.uint8)
    gt[3:7, 3:7] = 1
    pred = np.zeros((10, 10), np.uint8)
    pred[4:6, 4:6] = 1
    return pred, gt


def test_labelmap_mba_perfect_is_one():
    _, gt = square_maps()
    assert metrics.mba(gt == 1, gt == 1) == 1.0  # metrics.mba's scale is [0, 1], and so is labelmap_mba's
    assert labelmap_mba(gt, gt, IGN) == 1.0
    assert labelmap_mba(gt, gt, None) == 1.0


def test_labelmap_mba_eroded_hand_checked():
    pred, gt = square_maps()
    # 10x10 -> every radius is 1 (cross kernel): band = 12 square-edge px + 16 px outside = 28;
    # the eroded prediction is wrong on the 12 edge px, for class 1 and for class 0 alike -> 16/28
    assert metrics.mba_radii(10, 10) == [1] * 5
    value = labelmap_mba(pred, gt, IGN)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(4 / 7)


def test_labelmap_mba_ignore_pixels_never_count():
    pred, gt = square_maps()
    gt[:, 0] = IGN
    values = []
    for fill in (0, 1, 5, IGN):
        p = pred.copy()
        p[:, 0] = fill
        values.append(labelmap_mba(p, gt, IGN))
    assert values[0] is not None and all(v == values[0] for v in values)
    # with ignore=None the 255 column is a class of its own and pred's values there matter
    free = [labelmap_mba(np.where(gt == IGN, fill, pred), gt, None) for fill in (0, IGN)]
    assert free[0] != free[1]


def test_labelmap_mba_skips_undefined_classes():
    assert labelmap_mba(np.zeros((10, 10), int), np.zeros((10, 10), int), None) is None  # class 0 is full
    assert labelmap_mba(np.zeros((10, 10), int), np.full((10, 10), IGN), IGN) is None  # nothing but ignore
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 9\)"):
        labelmap_mba(np.zeros((10, 10), int), np.zeros((10, 9), int), None)
