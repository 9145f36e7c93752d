"""Evaluation of re-labeled annotations: COCO mask AP (instances) and mIoU / mBA (label maps).

Pure functions: dicts and arrays in, numbers out (no Ray, no storage). Binary-mask metrics come from
``pipeline.metrics`` (mBA is ``metrics.mba``, not re-implemented here).

**COCO instances** (``coco_mask_ap``, ``coco_ap_before_after``): pycocotools ``COCOeval`` with
``iouType="segm"`` and its default parameters (IoU thresholds 0.50:0.05:0.95, 101 recall points,
maxDets 1/10/100, areas small < 32², medium < 96², large above, measured by the annotations' ``area``).
The ground truth and the predictions are normalised first, on copies (inputs are never modified):

- every segmentation (polygons, uncompressed RLE with list ``counts``, compressed RLE with ``str`` or
  ``bytes`` counts) becomes a compressed RLE with ``bytes`` counts at its image's (height, width);
  polygons with fewer than 3 points are dropped (pycocotools would read a 4-number list as a box);
- ground-truth annotations get ids 1..N in their given order (COCOeval treats id 0 as "unmatched"),
  ``iscrowd`` defaults to 0 and a missing ``area`` is the mask's pixel area (a given one is kept);
- predictions get ``area`` = mask pixel area, ``bbox`` from the mask, ``iscrowd`` = 0 and
  ``score`` (default 1.0). ``COCO.loadRes`` is not used: it takes the box's area when a ``bbox`` is
  present, mutates its input and fails on an empty list.

Undefined COCOeval values (``-1``: no ground truth in that area range) are ``None``; the rest are
scaled to [0, 100] as papers report them.

**Label maps** (``labelmap_counts``, ``miou``, ``labelmap_mba``): (H, W) integer class maps; pixels
where the ground truth equals ``ignore`` are excluded as described in each function.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline import metrics

__all__ = [
    "coco_mask_ap",
    "coco_ap_before_after",
    "labelmap_counts",
    "labelmap_mba",
    "miou",
]

# COCOeval.stats indices (default segm parameters)
_STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


# ---------------------------------------------------------------------------------------------------------
# COCO mask AP


def _to_rle(segm: Any, h: int, w: int) -> dict[str, Any]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE with bytes counts.

    h, w: the image's height and width; an RLE's ``size`` must equal [h, w] (ValueError otherwise).
    """
    if isinstance(segm, (list, tuple)):  # polygons: a list of flat [x0, y0, x1, y1, ...] lists
        polys = [[float(v) for v in np.asarray(p, dtype=np.float64).ravel()] for p in segm]
        polys = [p for p in polys if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(segm, Mapping) and "counts" in segm and "size" in segm:
        size = [int(v) for v in segm["size"]]
        if size != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image's [height, width] {[h, w]}")
        counts = segm["counts"]
        if isinstance(counts, (list, tuple, np.ndarray)):  # uncompressed RLE
            return mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, h, w)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise TypeError(f"RLE counts must be str, bytes or a list, got {type(counts).__name__}")
        return {"size": size, "counts": counts}
    raise TypeError(f"segmentation must be polygons (list) or an RLE dict, got {type(segm).__name__}")


def _image_sizes(gt: Mapping[str, Any]) -> dict[Any, tuple[int, int]]:
    sizes = {}
    for img in gt.get("images", []):
        try:
            sizes[img["id"]] = (int(img["height"]), int(img["width"]))
        except KeyError as e:
            raise ValueError(f"gt image {img!r} lacks {e.args[0]!r}") from None
    return sizes


def _gt_coco(gt: Mapping[str, Any], sizes: Mapping[Any, tuple[int, int]]) -> COCO:
    anns = []
    for i, ann in enumerate(gt.get("annotations", [])):
        if ann["image_id"] not in sizes:
            raise ValueError(f"gt annotation {i} has image_id {ann['image_id']!r}, not in gt images")
        rle = _to_rle(ann["segmentation"], *sizes[ann["image_id"]])
        new = {k: v for k, v in ann.items() if k != "segmentation"}
        new.update(
            id=i + 1,
            segmentation=rle,
            iscrowd=int(ann.get("iscrowd", 0) or 0),
            area=float(ann["area"]) if ann.get("area") is not None else float(mask_utils.area(rle)),
        )
        anns.append(new)
    return _coco(gt, anns)


def _coco(gt: Mapping[str, Any], anns: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": copy.deepcopy(list(gt.get("images", []))),
        "categories": copy.deepcopy(list(gt.get("categories", []))),
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_mask_ap(gt: Mapping[str, Any], predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """COCO mask AP of ``predictions`` against the instances dict ``gt`` (pycocotools, segm).

    gt: a COCO instances dict: ``images`` (id, height, width), ``annotations`` (image_id,
    category_id, segmentation as polygons / uncompressed RLE / compressed RLE with str or bytes counts,
    optional iscrowd and area) and ``categories`` (id). Crowd regions (iscrowd = 1) are handled by
    COCOeval: a prediction matched to one is ignored, neither a true nor a false positive.
    predictions: annotation dicts with image_id, category_id, segmentation (same formats, at the gt
    image's size; an RLE of another size is a ValueError) and optional score (default 1.0, finite).

    Dropped (not evaluated, counted in ``n_dropped``): predictions with a truthy ``iscrowd`` (crowd
    regions are not detections), with an image_id not among gt's images, or with a category_id not among
    gt's categories (COCOeval would ignore those silently).

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100": float in [0, 100] or None when
    COCOeval reports -1 (no ground truth for it), "n_predictions": predictions evaluated,
    "n_dropped": predictions dropped}. With no predictions at all, every AP/AR whose ground truth
    exists is 0.0 (COCOeval's value), the others None. COCOeval's prints are suppressed (stdout is
    redirected while it runs, which is process-global: do not call from several threads at once).
    """
    sizes = _image_sizes(gt)
    cat_ids = {c["id"] for c in gt.get("categories", [])}
    gt_coco = _gt_coco(gt, sizes)

    dts: list[dict[str, Any]] = []
    n_dropped = 0
    for pred in predictions:
        if pred.get("iscrowd", 0) or pred["image_id"] not in sizes or pred["category_id"] not in cat_ids:
            n_dropped += 1
            continue
        score = 1.0 if pred.get("score") is None else float(pred["score"])
        if not math.isfinite(score):
            raise ValueError(f"prediction {len(dts) + n_dropped} has a non-finite score {score}")
        rle = _to_rle(pred["segmentation"], *sizes[pred["image_id"]])
        dts.append(
            {
                "id": len(dts) + 1,
                "image_id": pred["image_id"],
                "category_id": pred["category_id"],
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "score": score,
            }
        )
    dt_coco = _coco(gt, dts)

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt_coco, dt_coco, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {}
    for key, idx in _STATS.items():
        v = float(ev.stats[idx])
        out[key] = None if v < 0 else 100.0 * v
    out["n_predictions"] = len(dts)
    out["n_dropped"] = n_dropped
    return out


def coco_ap_before_after(
    gt: Mapping[str, Any],
    before: Iterable[Mapping[str, Any]],
    after: Iterable[Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """{"before": coco_mask_ap(gt, before), "after": coco_mask_ap(gt, after)} (e.g. coarse vs refined)."""
    return {"before": coco_mask_ap(gt, before), "after": coco_mask_ap(gt, after)}


# ---------------------------------------------------------------------------------------------------------
# label maps


def _check_maps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must be (H, W) maps of the same shape, got pred {pred.shape} and gt {gt.shape}"
        )
    for name, a in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
    return pred, gt


def _value_counts(a: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(a, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def labelmap_counts(pred: np.ndarray, gt: np.ndarray, ignore: int | None) -> dict[int, tuple[int, int]]:
    """Per-class (intersection, union) pixel counts of two label maps.

    pred, gt: (H, W) integer (or bool) class maps of the same shape (ValueError naming both shapes
    otherwise). Pixels where ``gt == ignore`` are excluded from every count (``ignore=None``: none are).
    Classes: every id present in pred or gt at the remaining pixels, except ``ignore`` (a pred pixel
    equal to ``ignore`` belongs to no class). For class c: intersection = #(pred == c and gt == c),
    union = #(pred == c or gt == c), both over the remaining pixels; so union >= 1 for every key.
    Returns {class id: (intersection, union)} with Python ints.
    """
    pred, gt = _check_maps(pred, gt)
    if ignore is not None:
        valid = gt != ignore
        pred, gt = pred[valid], gt[valid]
    else:
        pred, gt = pred.ravel(), gt.ravel()
    n_pred, n_gt = _value_counts(pred), _value_counts(gt)
    n_inter = _value_counts(gt[pred == gt])
    out = {}
    for c in sorted(set(n_pred) | set(n_gt)):
        if ignore is not None and c == ignore:
            continue
        inter = n_inter.get(c, 0)
        out[c] = (inter, n_pred.get(c, 0) + n_gt.get(c, 0) - inter)
    return out


def miou(counts: Iterable[Mapping[int, tuple[int, int]]]) -> dict[str, Any]:
    """Dataset mIoU from per-image ``labelmap_counts``.

    counts: one {class id: (intersection, union)} dict per image. Per class, IoU = sum of its
    intersections / sum of its unions over all images (a class missing from an image adds nothing);
    never the mean of per-image IoUs. mIoU is the mean of the per-class IoUs over classes whose total
    union is > 0. Returns {"miou": float in [0, 100] or None (no class with a union),
    "per_class": {class id: IoU in [0, 100], or None for a total union of 0}}.
    """
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for i, image in enumerate(counts):
        for c, (a, b) in image.items():
            a, b = int(a), int(b)
            if a < 0 or b < a:
                raise ValueError(f"miou: image {i} class {c} has intersection {a} and union {b}")
            inter[c] = inter.get(c, 0) + a
            union[c] = union.get(c, 0) + b
    per_class = {c: (100.0 * inter[c] / union[c] if union[c] > 0 else None) for c in sorted(union)}
    values = [v for v in per_class.values() if v is not None]
    return {"miou": sum(values) / len(values) if values else None, "per_class": per_class}


def labelmap_mba(pred: np.ndarray, gt: np.ndarray, ignore: int | None) -> float | None:
    """Mean over gt classes of the binary mBA (``metrics.mba``, in [0, 1], not x100).

    pred, gt: (H, W) integer (or bool) class maps of the same shape (ValueError naming both shapes
    otherwise). For every class c present in gt (except ``ignore``; a class present only in pred is not
    scored here, mIoU counts it): the masks ``gt == c`` and ``pred == c`` as uint8 {0, 255}, where pred's
    mask is set equal to gt's (i.e. 0) at pixels where ``gt == ignore``, so a prediction there is never
    an error; then ``metrics.mba(pred_c, gt_c)``. Note that ignore pixels next to class c still lie in
    gt_c's boundary band and count there as correct pixels (mBA's band comes from gt_c alone).
    Classes whose mBA is None (gt_c empty or covering the whole image) are skipped. Returns the mean
    over the remaining classes in [0, 1], or None when no class has a value.
    """
    pred, gt = _check_maps(pred, gt)
    ignored = (gt == ignore) if ignore is not None else None
    values = []
    for c in np.unique(gt):
        if ignore is not None and c == ignore:
            continue
        gt_c = gt == c
        pred_c = pred == c
        if ignored is not None:
            pred_c[ignored] = gt_c[ignored]
        v = metrics.mba(pred_c.view(np.uint8) * np.uint8(255), gt_c.view(np.uint8) * np.uint8(255))
        if v is not None:
            values.append(v)
    return sum(values) / len(values) if values else None
