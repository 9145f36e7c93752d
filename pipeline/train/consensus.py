"""Object masks that several human annotators agree on, from full-image human segmentations.

Datasets such as BSDS500 give each photo several hand-drawn segmentations (label maps that split
the whole image into regions). A region drawn the same way by most annotators is an object whose
boundary people agree on; :func:`consensus_objects` finds those regions, so they can serve as hand-
drawn truth (DESIGN §3b: the judge of a refiner is hand-drawn masks of real photographs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.train.perturb import mask_iou
from pipeline.train.regions import largest_piece

__all__ = ["ConsensusObject", "best_match", "best_match_iou", "consensus_objects", "other_drawings"]


@dataclass(frozen=True)
class ConsensusObject:
    mask: np.ndarray  # (H, W) bool, the region as one annotator drew it (tiny specks/holes mended)
    annotator: int  # index of the segmentation it was taken from
    agreement: float  # mean over the other annotators of their best single-region IoU with it
    agreeing: int  # how many other annotators drew a region with IoU >= the threshold


def best_match(mask: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The single region of ``labels`` ((H, W) ints) with the highest IoU with ``mask`` ((H, W)
    bool): (that IoU, the region as an (H, W) bool mask)."""
    lab = labels.ravel().astype(np.int64)
    lo = lab.min()
    lab = lab - lo
    inter = np.bincount(lab[mask.ravel()], minlength=int(lab.max()) + 1).astype(np.float64)
    sizes = np.bincount(lab, minlength=inter.size).astype(np.float64)
    ious = inter / np.maximum(sizes + float(mask.sum()) - inter, 1.0)
    best = int(np.argmax(ious))
    return float(ious[best]), labels == best + lo


def best_match_iou(mask: np.ndarray, labels: np.ndarray) -> float:
    """The highest IoU between ``mask`` ((H, W) bool) and any single region of ``labels`` ((H, W) ints)."""
    return best_match(mask, labels)[0]


def other_drawings(obj: ConsensusObject, segmentations: Sequence[np.ndarray],
                   min_iou: float = 0.9) -> list[np.ndarray]:
    """How the other annotators drew ``obj``: each one's single region with IoU >= ``min_iou`` with
    it ((H, W) bool masks, annotator order). Scoring these against ``obj.mask`` measures how far
    people's own lines lie apart (the judge's noise floor)."""
    out = []
    for b, seg in enumerate(segmentations):
        if b != obj.annotator:
            iou, region = best_match(obj.mask, seg)
            if iou >= min_iou:
                out.append(region)
    return out


def consensus_objects(segmentations: Sequence[np.ndarray], *, min_area: float = 0.03,
                      max_area: float = 0.6, min_iou: float = 0.9, min_agreeing: int = 2,
                      max_objects: int = 2, min_hole: float = 0.001) -> list[ConsensusObject]:
    """Regions of one photo's human segmentations (K label maps, (H, W) ints) that others agree on.

    A region qualifies when it covers ``min_area``..``max_area`` of the image, its largest
    4-connected piece holds >= 90% of it (an object, not scattered pieces), and at least
    ``min(min_agreeing, K - 1)`` other annotators drew a single region with IoU >= ``min_iou`` with
    it. The same object drawn by several annotators is kept once (the drawing the others agree with
    most); objects are returned best-agreed first, at most ``max_objects``. Each mask keeps its
    largest piece with holes under ``min_hole`` of the image filled (slips of the pen)."""
    if not segmentations:
        return []
    shape = segmentations[0].shape
    if any(s.shape != shape for s in segmentations):
        raise ValueError(f"segmentations differ in shape: {[s.shape for s in segmentations]}")
    total = float(shape[0] * shape[1])
    need = min(min_agreeing, len(segmentations) - 1)
    if need < 1:
        return []
    candidates: list[ConsensusObject] = []
    for a, seg in enumerate(segmentations):
        for label in np.unique(seg):
            region = seg == label
            area = float(region.sum())
            if not min_area <= area / total <= max_area:
                continue
            piece = largest_piece(region, min_hole=int(min_hole * total))
            if float((piece & region).sum()) < 0.9 * area:
                continue
            ious = [best_match_iou(region, other) for b, other in enumerate(segmentations) if b != a]
            agreeing = sum(i >= min_iou for i in ious)
            if agreeing >= need:
                candidates.append(ConsensusObject(piece, a, float(np.mean(ious)), agreeing))
    candidates.sort(key=lambda c: (-c.agreement, c.annotator))
    kept: list[ConsensusObject] = []
    for c in candidates:
        if len(kept) == max_objects:
            break
        if all(mask_iou(c.mask, k.mask) < 0.5 for k in kept):
            kept.append(c)
    return kept

