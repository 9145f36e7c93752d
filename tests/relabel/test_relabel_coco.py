"""COCO instances for re-labeling (pure parts): validation, rasterising at full resolution from
low-resolution annotations, the crop rule, encoding back, crowd regions, the output merge."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from pipeline.relabel.coco import AnnotationError, annotation_size, index_coco, polygon_self_intersects
from pipeline.relabel.coco_masks import coarse_window, decode_full, encode_full, instance_box, rescale_crowd
from pipeline.relabel.crops import CropRule, crop_box
from pipeline.relabel.instances import colour_window, relabel_instances
from pipeline.relabel.output import merge_coco
from tests.relabel.scenes import rle_str, uncompressed_rle, write_coco_dataset

H, W = 256, 320


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_coco_dataset(str(tmp_path_factory.mktemp("coco")), 2, height=H, width=W, factor=8)


def _image_anns(data, image_id):
    return [a for a in data["doc"]["annotations"] if a["image_id"] == image_id]


def _oracle(truths):
    """A refiner that returns the exact truth of the instance whose coarse mask it was given."""

    def refine(window, coarse):
        x0, y0, x1, y1 = window
        best = max(truths, key=lambda t: int(((coarse > 128) & t[y0:y1, x0:x1]).sum()))
        return best[y0:y1, x0:x1].astype(np.float32)

    return refine


def test_oracle_refiner_round_trips_exact_truth_and_keeps_every_field(dataset):
    idx = index_coco(dataset["doc"])
    gt = {g["id"]: (g, (H, W)) for g in dataset["gt_doc"]["annotations"]}
    for image_id in idx.images:
        anns = _image_anns(dataset, image_id)
        before = copy.deepcopy(anns)
        ann_hw = annotation_size(idx.images[image_id], H, W)
        assert ann_hw == (H // 8, W // 8)
        truths = [dataset["truths"][a["id"]] for a in anns if not a["iscrowd"]]
        out, recs = relabel_instances(anns, idx.categories, ann_hw, (H, W), _oracle(truths), gt=gt)
        assert anns == before  # inputs untouched
        assert [a["id"] for a in out] == [a["id"] for a in anns]
        for a, new, rec in zip(anns, out, recs):
            assert rec["annotation_id"] == a["id"] and rec["category_id"] == a["category_id"]
            if a["iscrowd"]:
                assert rec["status"] == "skipped"
                continue
            assert rec["status"] == "ok", rec
            truth = dataset["truths"][a["id"]]
            # every input field kept, segmentation/area/bbox recomputed from the refined mask
            assert {k: v for k, v in new.items() if k not in ("segmentation", "area", "bbox")} == \
                {k: v for k, v in a.items() if k not in ("segmentation", "area", "bbox")}
            seg = new["segmentation"]
            assert isinstance(seg["counts"], str) and seg["size"] == [H, W]
            m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            np.testing.assert_array_equal(m.astype(bool), truth)
            assert new["area"] == int(truth.sum())
            ys, xs = np.nonzero(truth)
            assert new["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)]
            assert rec["iou_refined"] == 1.0 and rec["mba_refined"] == 1.0
            assert 0.5 < rec["iou_coarse"] < 0.99 and rec["mba_coarse"] < 0.9
            assert rec["intersection_refined"] == rec["union_refined"] == int(truth.sum())


def test_polygons_scale_by_coordinates_and_rle_upsamples_bilinearly():
    low = np.zeros((30, 40), np.uint8)
    cv2.circle(low, (20, 15), 9, 1, -1)
    # RLE at 1/8: the coarse window is the bilinear upsampling (the data contract) of the low mask
    ann = {"id": 1, "category_id": 1, "segmentation": rle_str(low)}
    full = cv2.resize(low * 255, (320, 240), interpolation=cv2.INTER_LINEAR)
    box = instance_box(ann, (30, 40), (240, 320))
    ys, xs = np.nonzero(full)
    assert box[0] <= xs.min() and box[1] <= ys.min() and box[2] > xs.max() and box[3] > ys.max()
    win = crop_box(box, 240, 320)
    got = coarse_window(ann, (30, 40), (240, 320), win)
    ref = full[win[1]:win[3], win[0]:win[2]]
    assert np.abs(got.astype(int) - ref).max() <= 1
    # a polygon drawn at 1/8 is scaled and rasterised at full size (sharp, exact corners)
    poly = {"id": 2, "category_id": 1, "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]}
    win = (0, 0, 320, 240)
    m = coarse_window(poly, (30, 40), (240, 320), win) > 0
    direct = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[40, 40, 200, 40, 200, 120, 40, 120]],
                                                                        240, 320))).astype(bool)
    np.testing.assert_array_equal(m, direct)
    assert set(np.unique(coarse_window(poly, (30, 40), (240, 320), win))) == {0, 255}
    # a window cut: the same pixels as the full rasterisation
    cut = (30, 20, 150, 100)
    np.testing.assert_array_equal(coarse_window(poly, (30, 40), (240, 320), cut) > 0,
                                  direct[20:100, 30:150])
    # uncompressed and compressed RLE give the same mask
    un = {"id": 3, "category_id": 1, "segmentation": uncompressed_rle(low)}
    np.testing.assert_array_equal(decode_full(un, (30, 40), (240, 320)),
                                  decode_full(ann, (30, 40), (240, 320)))


@pytest.mark.parametrize(
    "segmentation, error_type, words",
    [
        ([[0, 0, 10, 0]], "bad_polygon", "2 points"),
        ([[0, 0, 10, 0, 20, 0]], "bad_polygon", "zero area"),  # collinear: degenerate
        ([[0, 0, 10, 10, 10, 0, 0, 10]], "bad_polygon", "self-intersecting"),  # a bow tie
        ([[0, 0, 10, 0, 10]], "bad_polygon", "odd number"),
        ([[0, 0, 10, float("nan"), 10, 10]], "bad_polygon", "non-finite"),
        ([], "bad_polygon", "empty"),
        ({"size": [31, 40], "counts": [1240]}, "bad_rle", "size"),  # made for another size
        ({"size": [30, 40], "counts": [100, 5]}, "bad_rle", "add up to 105"),
        ({"size": [30, 40], "counts": "0?~~garbage"}, "bad_rle", ""),
        (None, "segmentation_missing", "no polygon or RLE"),
    ],
)
def test_bad_annotations_are_named_errors(segmentation, error_type, words):
    ann = {"id": 77, "image_id": 1, "category_id": 1, "segmentation": segmentation}
    with pytest.raises(AnnotationError) as e:
        from pipeline.relabel.coco import check_annotation

        check_annotation(ann, {1})
        instance_box(ann, (30, 40), (240, 320))
    assert e.value.error_type == error_type and e.value.annotation_id == 77
    assert "annotation 77" in e.value.message and words in e.value.message


def test_repeated_and_closing_points_are_fine():
    ann = {"id": 5, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 0, 10, 10, 0, 10, 0, 0]]}
    from pipeline.relabel.coco import check_annotation

    check_annotation(ann, {1})
    assert instance_box(ann, (30, 40), (30, 40)) == (0, 0, 12, 12)


def test_degenerate_parts_of_a_multi_part_annotation_are_left_out_and_said():
    ann = {"id": 8, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 20, 2, 20], [30, 30, 31, 30, 32, 30],
                                                        [25, 25, 26, 26]]}
    out, recs = relabel_instances([ann], {1}, (40, 40), (40, 40), lambda w, c: (c > 128).astype(np.float32))
    assert recs[0]["status"] == "ok"
    assert "left out 2 degenerate polygon part(s)" in recs[0]["null_reason"]
    assert "polygon 1 has zero area" in recs[0]["null_reason"]
    assert "polygon 2 has 2 points" in recs[0]["null_reason"]
    assert out[0]["area"] == int((decode_full(ann, (40, 40), (40, 40)) > 0).sum()) > 0


def test_category_errors_and_one_bad_annotation_does_not_stop_the_image(dataset):
    idx = index_coco(dataset["doc"])
    image_id = next(iter(idx.images))
    anns = copy.deepcopy(_image_anns(dataset, image_id))
    bad = [
        {"id": 901, "image_id": image_id, "segmentation": [[0, 0, 10, 0, 10, 10]]},  # no category
        {"id": 902, "image_id": image_id, "category_id": 42, "segmentation": [[0, 0, 10, 0, 10, 10]]},
        {"id": 903, "image_id": image_id, "category_id": 1, "segmentation": [[1, 1, 9, 9, 9, 1, 1, 9]]},
    ]
    truths = [dataset["truths"][a["id"]] for a in anns if not a["iscrowd"]]
    out, recs = relabel_instances(anns + bad, idx.categories, (H // 8, W // 8), (H, W), _oracle(truths))
    by_id = {r["annotation_id"]: r for r in recs}
    assert by_id[901]["error_type"] == "category_missing" and "no category_id" in by_id[901]["error_message"]
    assert by_id[902]["error_type"] == "category_missing" and "42" in by_id[902]["error_message"]
    assert by_id[903]["error_type"] == "bad_polygon"
    assert all(by_id[a["id"]]["status"] in ("ok", "skipped") for a in anns)
    assert out[-3:] == bad  # kept as they were


def test_bad_ground_truth_is_said_not_blamed_on_the_annotation(dataset):
    idx = index_coco(dataset["doc"])
    image_id = next(iter(idx.images))
    anns = [a for a in _image_anns(dataset, image_id) if not a["iscrowd"]]
    bad = {"id": anns[0]["id"], "category_id": 1, "segmentation": {"size": [1, 1], "counts": [1]}}
    gt = {anns[0]["id"]: (bad, (H, W))}
    _, recs = relabel_instances(anns, idx.categories, (H // 8, W // 8), (H, W),
                                lambda w, c: (c > 128).astype(np.float32), gt=gt)
    assert recs[0]["status"] == "ok" and recs[0].get("iou_refined") is None
    assert recs[0]["null_reason"].startswith("ground truth annotation")
    assert "bad_rle" in recs[0]["null_reason"]


def test_refiner_failure_on_one_instance_is_an_error_row(dataset):
    idx = index_coco(dataset["doc"])
    image_id = next(iter(idx.images))
    anns = _image_anns(dataset, image_id)
    calls = []

    def flaky(window, coarse):
        calls.append(window)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return (coarse > 128).astype(np.float32)

    out, recs = relabel_instances(anns, idx.categories, (H // 8, W // 8), (H, W), flaky)
    statuses = [r["status"] for r in recs if r["status"] != "skipped"]
    assert statuses == ["ok", "error", "ok"]
    err = [r for r in recs if r["status"] == "error"][0]
    assert err["error_type"] == "refine_error" and "out of memory" in err["error_message"]
    assert out[1] == anns[1]


def test_crowd_regions_are_copied_not_refined(dataset):
    crowd = [a for a in dataset["doc"]["annotations"] if a["iscrowd"]][0]
    same = rescale_crowd(crowd, (H // 8, W // 8), (H // 8, W // 8))
    assert same is crowd  # same size: byte-identical
    big = rescale_crowd(crowd, (H // 8, W // 8), (H, W))
    assert {k: v for k, v in big.items() if k not in ("segmentation", "area", "bbox")} == \
        {k: v for k, v in crowd.items() if k not in ("segmentation", "area", "bbox")}
    low = mask_utils.decode(mask_utils.frPyObjects(crowd["segmentation"], H // 8, W // 8))
    up = cv2.resize(low * 255, (W, H), interpolation=cv2.INTER_LINEAR) > 128
    got = mask_utils.decode({"size": [H, W], "counts": big["segmentation"]["counts"].encode()}).astype(bool)
    assert (got != up).sum() <= 0.002 * up.sum()  # fixed-point rounding at the edge only
    assert big["area"] == int(got.sum())


def test_annotation_size_from_records_scale_and_aspect():
    assert annotation_size({"id": 1, "width": 40, "height": 30}, 240, 320) == (30, 40)
    assert annotation_size({"id": 1}, 240, 320, scale=8) == (30, 40)
    with pytest.raises(AnnotationError) as e:
        annotation_size({"id": 5, "width": 40, "height": 40}, 240, 320)
    assert e.value.error_type == "aspect_mismatch" and "image 5" in e.value.message
    with pytest.raises(AnnotationError) as e:
        annotation_size({"id": 6}, 240, 320)
    assert e.value.error_type == "missing_size"


def test_index_rejects_malformed_files_and_finds_orphans():
    with pytest.raises(ValueError, match="'images' must be a list"):
        index_coco({"annotations": []})
    with pytest.raises(ValueError, match="duplicate image id 3"):
        index_coco({"images": [{"id": 3, "file_name": "a"}, {"id": 3, "file_name": "b"}], "annotations": []})
    with pytest.raises(ValueError, match=r"images\[0\] needs an 'id' and a 'file_name'"):
        index_coco({"images": [{"id": 3}], "annotations": []})
    idx = index_coco({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 4}],
                      "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 9},
                                      {"id": 3, "image_id": 1}]})
    assert idx.by_image == {1: [0, 2]} and idx.orphans == [1] and idx.categories == {4}


def test_self_intersection_detector():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    assert not polygon_self_intersects(square)
    assert polygon_self_intersects(np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float))
    # a star drawn with crossing strokes (pentagram) vs a concave star outline
    t = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    pent = np.stack([np.cos(t), np.sin(t)], 1)
    assert polygon_self_intersects(pent[[0, 2, 4, 1, 3]])
    outline = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1),
                              0.4 * np.stack([np.cos(t + np.pi / 5), np.sin(t + np.pi / 5)], 1)])
    order = np.ravel(np.stack([np.arange(5), np.arange(5, 10)], 1))
    assert not polygon_self_intersects(outline[order])
    # touching is not crossing: an outline around a one-pixel-wide spur goes out and back along
    # the same pixels (what cv2.findContours draws), and a vertex may lie on another edge
    spur = np.array([[0, 0], [10, 0], [10, 5], [20, 5], [10, 5], [10, 10], [0, 10]], float)
    assert not polygon_self_intersects(spur)
    pinch = np.array([[0, 0], [10, 0], [5, 5], [10, 10], [0, 10], [5, 5]], float)
    assert not polygon_self_intersects(pinch)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 1
    mask[14:30, 14] = 1  # a one-pixel line
    mask[25:35, 10:30] = 1
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert not polygon_self_intersects(contours[0].reshape(-1, 2).astype(float))
    circle = np.stack([np.cos(np.linspace(0, 6.28, 400)), np.sin(np.linspace(0, 6.28, 400))], 1)
    assert not polygon_self_intersects(circle)


def test_crop_rule():
    rule = CropRule()
    # margin 25% of the long side, at least 16 px; at least 256 px a side; shifted into the image
    assert crop_box((400, 300, 800, 500), 2000, 3000, rule) == (300, 200, 900, 600)
    assert crop_box((1000, 1000, 1004, 1004), 2000, 3000, rule) == (874, 874, 1130, 1130)
    assert crop_box((0, 0, 4, 4), 2000, 3000, rule) == (0, 0, 256, 256)
    assert crop_box((2990, 1990, 3000, 2000), 2000, 3000, rule) == (2744, 1744, 3000, 2000)
    assert crop_box((10, 10, 20, 20), 100, 120, rule) == (0, 0, 120, 100)  # clipped to a small image
    assert crop_box((100, 100, 200, 120), 1000, 1000, CropRule(0.0, 0, 1)) == (100, 100, 200, 120)
    with pytest.raises(ValueError, match="relabel.min_size"):
        CropRule(min_size=0)
    with pytest.raises(ValueError, match="empty box"):
        crop_box((5, 5, 5, 9), 100, 100)


def test_colour_window_matches_the_refiners_nearest_resize():
    rng = np.random.default_rng(0)
    cmap = rng.integers(0, 255, (75, 100, 3), dtype=np.uint8)
    full = F.interpolate(torch.from_numpy(cmap).permute(2, 0, 1)[None].float(), size=(301, 397),
                         mode="nearest")[0].permute(1, 2, 0).numpy().astype(np.uint8)
    for win in [(0, 0, 397, 301), (13, 7, 200, 150), (390, 290, 397, 301)]:
        x0, y0, x1, y1 = win
        np.testing.assert_array_equal(colour_window(cmap, 301, 397, win), full[y0:y1, x0:x1])


def test_merge_keeps_order_other_images_and_everything_else():
    doc = {"info": {"v": 1}, "categories": [{"id": 1}], "extra": [1, 2],
           "images": [{"id": 1, "file_name": "a", "width": 4}, {"id": 2, "file_name": "b", "width": 4}],
           "annotations": [{"id": 10, "image_id": 1}, {"id": 11, "image_id": 2}, {"id": 12, "image_id": 1},
                           {"id": 13, "image_id": 99}]}
    parts = {1: {"image": {"id": 1, "file_name": "a", "width": 32},
                 "annotations": [{"id": 10, "image_id": 1, "x": 1}, {"id": 12, "image_id": 1, "x": 1}]}}
    out = merge_coco(doc, parts)
    assert out["info"] == doc["info"] and out["extra"] == doc["extra"]
    assert out["categories"] == doc["categories"]
    assert out["images"] == [parts[1]["image"], doc["images"][1]]
    assert [a["id"] for a in out["annotations"]] == [10, 11, 12, 13]
    assert out["annotations"][0]["x"] == 1 and "x" not in out["annotations"][1]
    assert json.loads(json.dumps(out)) == out


def test_encode_full_matches_pycocotools():
    m = np.zeros((50, 60), bool)
    m[10:20, 5:40] = True
    enc = encode_full(m)
    assert enc["area"] == 350 and enc["bbox"] == [5.0, 10.0, 35.0, 10.0]
    seg = enc["segmentation"]
    back = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    np.testing.assert_array_equal(back.astype(bool), m)


def test_stall_timeout_grows_with_the_largest_image():
    from pipeline.relabel.plan import LABELMAP_OBJECTS, STALL_S_PER_OBJECT, stall_timeout

    items = [{"kind": "coco", "anns": [{}] * 3}, {"kind": "coco", "anns": [{}] * 100}, {"kind": "coco"}]
    assert stall_timeout(300.0, items) == 300.0 + 100 * STALL_S_PER_OBJECT
    assert stall_timeout(300.0, [{"kind": "labelmap"}]) == 300.0 + LABELMAP_OBJECTS * STALL_S_PER_OBJECT
    assert stall_timeout(300.0, []) == 300.0


def test_trust_fields_of_the_refiner_reach_each_instance_record():
    """A refine function returning an Outcome (the trusted refiner): its score and decision land in
    the instance's record, and the output follows the Outcome's probabilities (the coarse mask when
    turned down)."""
    from pipeline.refine.trust import Outcome

    anns = [{"id": i, "category_id": 1, "segmentation": [[2 + i, 2, 20, 2, 20, 20, 2 + i, 20]]}
            for i in (1, 2)]
    calls = []

    def refiner(window, coarse):
        calls.append(window)
        accepted = len(calls) == 1  # the two instances get different decisions
        prob = (coarse > 128).astype(np.float32)
        info = {"trust_score": 0.9 if accepted else 0.1, "accepted": accepted, "line_level": 0.5,
                "accepted_share": 1.0 if accepted else 0.25}  # accept: regions
        return Outcome(prob, info)

    out, recs = relabel_instances(anns, {1}, (40, 40), (40, 40), refiner)
    assert [(r["annotation_id"], r["status"]) for r in recs] == [(1, "ok"), (2, "ok")]
    assert {r["annotation_id"]: (r["trust_score"], r["accepted"], r["accepted_share"]) for r in recs} == {
        1: (0.9, True, 1.0), 2: (0.1, False, 0.25)}
    assert all(r["changed_fraction"] == 0 for r in recs)
