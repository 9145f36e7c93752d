"""COCO instances as pixels: each instance's box and coarse window at full resolution (polygons
scaled and rasterised with pycocotools, RLE upsampled bilinearly, threshold 128), refined masks
encoded back as compressed RLE, crowd regions rescaled, and every annotation of an image as a mask
(``samsr evaluate``). The rules are in ``pipeline.relabel.coco``'s docstring. Pure: no storage, no
Ray.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.relabel.coco import (
    AnnotationError,
    ParsedAnnotation,
    annotation_size,
    index_coco,
    parse_annotation,
)
from pipeline.relabel.crops import upsample_window

__all__ = ["instance_box", "coarse_window", "decode_full", "encode_window", "encode_full", "rescale_crowd",
           "annotations_at"]


def _scaled_polygons(p: ParsedAnnotation, ann_hw: tuple[int, int], full_hw: tuple[int, int]) -> list:
    sy, sx = full_hw[0] / ann_hw[0], full_hw[1] / ann_hw[1]
    return [xy * np.array([sx, sy]) for xy in p.polygons]


def instance_box(
    ann: dict | ParsedAnnotation, ann_hw: tuple[int, int], full_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Full-resolution box (x0, y0, x1, y1), exclusive ends, that holds every pixel the
    instance's coarse mask can cover. Raises AnnotationError (bad polygon/RLE, empty)."""
    from pycocotools import mask as mask_utils

    p = parse_annotation(ann, ann_hw)
    ann = p.ann
    H, W = full_hw
    if p.kind == "polygon":
        pts = np.concatenate(_scaled_polygons(p, ann_hw, full_hw))
        x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    else:
        bx, by, bw, bh = (float(v) for v in mask_utils.toBbox(p.rle))
        if bw <= 0 or bh <= 0:
            raise AnnotationError(ann.get("id"), "empty_annotation", "the RLE mask is empty")
        sy, sx = H / ann_hw[0], W / ann_hw[1]
        # bilinear upsampling spreads a source pixel over about one source step more each side
        x0, x1 = math.floor((bx - 1) * sx), math.ceil((bx + bw + 1) * sx)
        y0, y1 = math.floor((by - 1) * sy), math.ceil((by + bh + 1) * sy)
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(W, int(x1)), min(H, int(y1))
    if x1 <= x0 or y1 <= y0:
        raise AnnotationError(ann.get("id"), "empty_annotation", "the instance lies outside the image")
    return x0, y0, x1, y1


def coarse_window(
    ann: dict | ParsedAnnotation, ann_hw: tuple[int, int], full_hw: tuple[int, int],
    window: tuple[int, int, int, int],
) -> np.ndarray:
    """The instance's coarse mask inside ``window`` (x0, y0, x1, y1) at full resolution:
    (y1 - y0, x1 - x0) uint8 in {0..255} (polygons: {0, 255}; RLE: bilinear 0..255)."""
    from pycocotools import mask as mask_utils

    p = parse_annotation(ann, ann_hw)
    x0, y0, x1, y1 = window
    wh, ww = y1 - y0, x1 - x0
    if p.kind == "polygon":
        polys = [(xy - np.array([x0, y0])).ravel().tolist() for xy in _scaled_polygons(p, ann_hw, full_hw)]
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, wh, ww))
        return mask_utils.decode(rle).astype(np.uint8) * 255
    low = mask_utils.decode(p.rle).astype(np.uint8) * 255
    return upsample_window(low, full_hw[0], full_hw[1], window)


def decode_full(
    ann: dict | ParsedAnnotation, ann_hw: tuple[int, int], full_hw: tuple[int, int]
) -> np.ndarray:
    """The annotation's mask at full resolution, (H, W) uint8 {0, 255} (threshold > 128 after
    the bilinear upsampling of an RLE)."""
    H, W = full_hw
    try:
        ann = parse_annotation(ann, ann_hw)
        box = instance_box(ann, ann_hw, full_hw)
    except AnnotationError as e:
        if e.error_type != "empty_annotation":
            raise
        return np.zeros((H, W), np.uint8)
    out = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = np.where(coarse_window(ann, ann_hw, full_hw, box) > 128, 255, 0)
    return out


def encode_full(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool/uint8 mask (non-zero = in) -> ``{"segmentation": compressed RLE with str
    counts, "area": int, "bbox": [x, y, w, h]}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool).astype(np.uint8)))
    area = int(mask_utils.area(rle))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": area, "bbox": bbox}


def encode_window(
    mask: np.ndarray, window: tuple[int, int, int, int], full_hw: tuple[int, int]
) -> dict[str, Any]:
    """``encode_full`` of a full-size mask that is ``mask`` inside ``window`` and empty elsewhere."""
    full = np.zeros(full_hw, dtype=np.uint8, order="F")
    x0, y0, x1, y1 = window
    full[y0:y1, x0:x1] = mask.astype(bool)
    return encode_full(full)


def rescale_crowd(ann: dict, ann_hw: tuple[int, int], full_hw: tuple[int, int]) -> dict:
    """A crowd annotation for the full-size image: unchanged when the sizes agree, else its mask
    upsampled (bilinear, > 128) with area and bbox recomputed; every other field kept."""
    if tuple(ann_hw) == tuple(full_hw):
        return ann
    out = dict(ann)
    out.update(encode_full(decode_full(ann, ann_hw, full_hw)))
    return out


def annotations_at(
    doc: dict, sizes: dict[Any, tuple[int, int]], scale: float | None = None
) -> tuple[list[dict], int]:
    """The annotations of ``doc`` whose image id is in ``sizes`` (``{image id: (H, W)}``), as
    compressed RLE at those sizes (the rules of this module: polygons scaled, RLE upsampled
    bilinearly; crowd regions through :func:`rescale_crowd`). Returns (annotations, how many
    could not be decoded and were left out)."""
    index = index_coco(doc)
    out, skipped = [], 0
    for image_id, positions in index.by_image.items():
        if image_id not in sizes:
            continue
        full = tuple(sizes[image_id])
        try:
            ann_hw = annotation_size(index.images[image_id], full[0], full[1], scale)
        except AnnotationError:
            skipped += len(positions)
            continue
        for j in positions:
            ann = doc["annotations"][j]
            try:
                if ann.get("iscrowd", 0):
                    out.append(rescale_crowd(ann, ann_hw, full))
                    continue
                new = dict(ann)
                new.update(encode_full(decode_full(ann, ann_hw, full)))
                out.append(new)
            except (AnnotationError, KeyError, TypeError):
                skipped += 1
    return out, skipped
