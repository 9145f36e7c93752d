"""Re-label the COCO instances of one image: every instance refined in its own window at full
resolution (proposals computed once for the image), encoded back as compressed RLE.

Pure: the caller passes the refiner as ``refine_fn(window, coarse) -> probabilities`` and gets
the output annotations plus one record per annotation (the manifest's instance rows).
Instances are processed one at a time, so memory is bounded by one window (plus one
full-size mask while encoding), whatever the number of instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.refine.trust import split_outcome
from pipeline.relabel.coco import AnnotationError, check_annotation, parse_annotation
from pipeline.relabel.coco_masks import coarse_window, decode_full, encode_window, instance_box, rescale_crowd
from pipeline.relabel.crops import CropRule, crop_box

__all__ = ["RefineWindow", "relabel_instances", "colour_window", "image_record_out", "pair_metrics"]

#: refine_fn(window (x0, y0, x1, y1), coarse (wh, ww) uint8 0..255) -> (wh, ww) float32 in [0, 1]
#: (or a pipeline.refine.trust.Outcome: its trust fields go into the instance's record)
RefineWindow = Callable[[tuple[int, int, int, int], np.ndarray], np.ndarray]


def colour_window(
    colour_map: np.ndarray, height: int, width: int, window: tuple[int, int, int, int]
) -> np.ndarray:
    """The proposals' colour map (h', w', 3) at working size, nearest-resized to the full image
    (height, width) the way the refiner does it (torch ``nearest``: source = floor(dst * h' / H)),
    cut to ``window``: (y1 - y0, x1 - x0, 3) uint8. Equal to cutting the full-size map, without
    building it."""
    x0, y0, x1, y1 = window
    hs, ws = colour_map.shape[:2]
    rows = np.minimum((np.arange(y0, y1, dtype=np.int64) * hs) // height, hs - 1)
    cols = np.minimum((np.arange(x0, x1, dtype=np.int64) * ws) // width, ws - 1)
    return np.ascontiguousarray(colour_map[rows[:, None], cols[None, :]])


def image_record_out(record: dict, height: int, width: int) -> dict:
    """The output image record: every field kept, ``width``/``height`` the real image size."""
    out = dict(record)
    out["width"], out["height"] = int(width), int(height)
    return out


def pair_metrics(coarse_full: np.ndarray, refined_full: np.ndarray, gt_full: np.ndarray) -> dict[str, Any]:
    """Manifest fields of one object with ground truth: ``iou_/mba_/biou_/intersection_/union_``
    ``coarse`` and ``refined`` (``pipeline.metrics.image_metrics`` on full-image masks) and
    ``null_reason``."""
    from pipeline.metrics import image_metrics

    rec: dict[str, Any] = {}
    reasons = []
    for tag, pred in (("coarse", coarse_full), ("refined", refined_full)):
        m = image_metrics(pred, gt_full)
        rec.update({f"iou_{tag}": m["iou"], f"mba_{tag}": m["mba"], f"biou_{tag}": m["biou"],
                    f"intersection_{tag}": m["intersection"], f"union_{tag}": m["union"]})
        if m.get("null_reason"):
            reasons.append(f"{tag}:{m['null_reason']}")
    rec["null_reason"] = "; ".join(reasons) or None
    return rec


def _paste(window_mask: np.ndarray, window, full_hw) -> np.ndarray:
    out = np.zeros(full_hw, np.uint8)
    x0, y0, x1, y1 = window
    out[y0:y1, x0:x1] = window_mask
    return out


def relabel_instances(
    annotations: list[dict],
    categories: set,
    ann_hw: tuple[int, int],
    full_hw: tuple[int, int],
    refine_fn: RefineWindow,
    *,
    rule: CropRule = CropRule(),
    gt: dict[Any, tuple[dict, tuple[int, int]]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Refine every non-crowd annotation of one image.

    annotations: the image's COCO annotations (input order kept); ann_hw: the (h, w) they were
    drawn at; full_hw: the real image (H, W); gt: optional ground truth by annotation id,
    ``{id: (gt annotation, its (h, w))}``.
    Returns (output annotations, one record per annotation) where a record has
    ``annotation_id, category_id, status ('ok' | 'error' | 'skipped'), error_type,
    error_message, change_iou, changed_fraction, t_refine_ms`` and, with ground truth, the
    coarse/refined IoU, mBA, Boundary IoU and counts (full-image definitions).
    A bad annotation (or one the refiner fails on: ``refine_error``) is kept unchanged in the
    output and its record says why.
    """
    from pipeline.io import to_binary_u8
    from pipeline.metrics import change_metrics

    out_anns, records = [], []
    for ann in annotations:
        aid = ann.get("id") if isinstance(ann, dict) else None
        rec: dict[str, Any] = {"annotation_id": aid,
                               "category_id": ann.get("category_id") if isinstance(ann, dict) else None}
        t0 = time.perf_counter()
        try:
            check_annotation(ann, categories)
            if ann.get("iscrowd", 0):
                out_anns.append(rescale_crowd(ann, ann_hw, full_hw))
                rec.update(status="skipped", null_reason="iscrowd: copied, not refined")
                records.append(rec)
                continue
            parsed = parse_annotation(ann, ann_hw)  # validated once for the box and the window
            box = instance_box(parsed, ann_hw, full_hw)
            dropped = parsed.dropped
            window = crop_box(box, full_hw[0], full_hw[1], rule)
            coarse = coarse_window(parsed, ann_hw, full_hw, window)
            if not (coarse > 128).any():
                raise AnnotationError(aid, "empty_annotation", "the coarse mask is empty at full resolution")
            prob, info = split_outcome(refine_fn(window, coarse))[:2]  # trust fields (candidate dropped)
            rec.update(info)
            refined = to_binary_u8(prob)
            new = dict(ann)
            new.update(encode_window(refined > 0, window, full_hw))
            ch = change_metrics(coarse, refined)
            rec.update(change_iou=ch["change_iou"], changed_fraction=ch["changed_fraction"])
            # changed_fraction is of the window; state it of the image
            if rec["changed_fraction"] is not None:
                wh, ww = coarse.shape
                rec["changed_fraction"] = rec["changed_fraction"] * wh * ww / (full_hw[0] * full_hw[1])
            if gt is not None and aid in gt:
                gt_ann, gt_hw = gt[aid]
                try:
                    gt_full = decode_full(gt_ann, gt_hw, full_hw)
                except AnnotationError as e:  # the ground truth is bad, not the annotation
                    rec["null_reason"] = f"ground truth {e.message} ({e.error_type}): no metrics"
                else:
                    before, after = _paste(coarse, window, full_hw), _paste(refined, window, full_hw)
                    rec.update(pair_metrics(before, after, gt_full))
            if dropped:
                note = f"left out {len(dropped)} degenerate polygon part(s): {'; '.join(dropped)}"
                rec["null_reason"] = "; ".join(v for v in (rec.get("null_reason"), note) if v)
            rec["status"] = "ok"
            out_anns.append(new)
        except AnnotationError as e:
            rec.update(status="error", error_type=e.error_type, error_message=e.message)
            out_anns.append(ann)
        except Exception as e:  # noqa: BLE001 - the refiner failed on this instance: a row, not a dead image
            rec.update(status="error", error_type="refine_error",
                       error_message=f"annotation {aid}: {type(e).__name__}: {e}"[:2000])
            out_anns.append(ann)
        rec["t_refine_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
        records.append(rec)
    return out_anns, records
