"""SAM-SR-v1 (DESIGN §2.3): replace the coarse mask by the union of the SAM masks it covers.

Everything is computed at SAM's working size (h, w), where the masks are:

1. The coarse mask (H, W) uint8 is resized to (h, w) (area averaging when shrinking, bilinear
   when growing) and binarised ``> 128`` -> ``C``.
2. Sparsity gate: ``fill = |C| / area(bounding box of C)``, the foreground fraction of the
   coarse mask's box. Thin structures (bicycles, railings, plant stems) have a low fill. If
   ``fill < sparsity_thresh`` (or ``C`` is empty) the gate "sparsity" fires.
3. Coverage of SAM mask i: ``|m_i & C| / |m_i|``; masks with coverage >= ``cover_thresh`` are
   merged: ``M = union of those m_i``.
4. Deformation gate: if ``IoU(M, C) < deform_iou_thresh`` (also when nothing was merged) the
   gate "deformation" fires.
5. When a gate fires the coarse mask is returned unchanged. Otherwise ``M`` (0/255) is resized
   back to (H, W) bilinearly and binarised ``> 128`` (a smooth upscale of the merged mask),
   giving (H, W) uint8 in {0, 255}.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["GATE_DEFORMATION", "GATE_SPARSITY", "bbox_fill", "merge_v1", "resize_mask"]

GATE_SPARSITY = "sparsity"
GATE_DEFORMATION = "deformation"


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 -> (h, w) uint8 (area averaging when shrinking, bilinear otherwise)."""
    if tuple(mask.shape) == tuple(size):
        return mask
    shrink = size[0] * size[1] < mask.shape[0] * mask.shape[1]
    return cv2.resize(mask, (int(size[1]), int(size[0])),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def bbox_fill(mask: np.ndarray) -> float:
    """Foreground fraction of the bounding box of a (h, w) bool mask; 0.0 when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0.0
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return float(mask.sum()) / float(box)


def merge_v1(
    coarse: np.ndarray,
    masks: np.ndarray,
    cover_thresh: float = 0.8,
    sparsity_thresh: float = 0.2,
    deform_iou_thresh: float = 0.7,
) -> tuple[np.ndarray, str | None]:
    """SAM-SR-v1's input mask for the refiner, and the gate that fired (or None).

    coarse: (H, W) uint8 (values > 128 are foreground); masks: (N, h, w) bool SAM masks at the
    working size. Returns ((H, W) uint8, gate): the merged mask in {0, 255} with gate None, or
    ``coarse`` itself with gate "sparsity" or "deformation" (see the module docstring).
    """
    if coarse.ndim != 2 or coarse.dtype != np.uint8:
        raise ValueError(f"coarse must be (H, W) uint8, got {coarse.shape} {coarse.dtype}")
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be (N, h, w) bool, got {masks.shape} {masks.dtype}")
    for name, v in (("cover_thresh", cover_thresh), ("sparsity_thresh", sparsity_thresh),
                    ("deform_iou_thresh", deform_iou_thresh)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    h, w = masks.shape[1:]
    c = resize_mask(coarse, (h, w)) > 128
    if not c.any() or bbox_fill(c) < sparsity_thresh:
        return coarse, GATE_SPARSITY
    mt = torch.from_numpy(masks)
    ct = torch.from_numpy(c)
    areas = mt.flatten(1).sum(1)
    inside = (mt & ct).flatten(1).sum(1)
    keep = (areas > 0) & (inside.double() >= cover_thresh * areas.double())
    merged = mt[keep].any(0) if bool(keep.any()) else torch.zeros_like(ct)
    union = int((merged | ct).sum())
    iou = int((merged & ct).sum()) / union if union else 0.0
    if iou < deform_iou_thresh:
        return coarse, GATE_DEFORMATION
    out = merged.numpy().astype(np.uint8) * 255
    if out.shape != coarse.shape:
        out = cv2.resize(out, (coarse.shape[1], coarse.shape[0]), interpolation=cv2.INTER_LINEAR)
        out = np.where(out > 128, 255, 0).astype(np.uint8)
    return out, None
