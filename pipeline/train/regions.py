"""Object-sized regions of real photographs, whose boundaries are real image edges (training data).

Composites (:mod:`pipeline.train.composites`) have exact truth but their boundaries are paste
seams that real photographs do not have. Here the truth is a region found by a classical
segmentation of an unaltered photo: Felzenszwalb's graph segmentation (scikit-image) cuts the
photo where neighbouring pixels differ most, then neighbouring segments are merged greedily by
colour similarity (mean CIELAB) into one connected region of a drawn target area. Every pixel of
the region's boundary lies on a segment boundary, i.e. on an edge of the photo itself.

Pure numpy / scikit-image / cv2; no I/O.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["segment_labels", "segment_graph", "grow_region", "region_masks", "boundary_contrast"]


def segment_labels(image: np.ndarray, scale: float, sigma: float = 0.8, min_size: int = 64) -> np.ndarray:
    """Felzenszwalb segmentation of (H, W, 3) uint8 RGB -> (H, W) int32 labels 0..n-1."""
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size).astype(np.int32)


def segment_graph(labels: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Per-segment area (n,), mean CIELAB colour (n, 3) and 4-neighbour adjacency sets."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    mean = np.stack([np.bincount(flat, weights=lab[:, c], minlength=n) for c in range(3)], axis=1)
    mean /= np.maximum(area, 1)[:, None]
    pairs = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        diff = a != b
        pairs.append(np.stack([a[diff], b[diff]], axis=1))
    edges = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for u, v in edges.tolist():
        adjacency[u].add(v)
        adjacency[v].add(u)
    return area, mean, adjacency


def grow_region(area: np.ndarray, mean: np.ndarray, adjacency: list[set[int]], seed: int,
                target_area: float, rng: np.random.Generator, greed: float = 0.8) -> list[int]:
    """Segments merged from ``seed`` until their area reaches ``target_area`` (pixels).

    Each step adds the neighbour whose mean colour is closest to the region's area-weighted mean
    colour (with probability ``greed``; otherwise a random neighbour, for shape variety).
    """
    region = [seed]
    inside = {seed}
    total = float(area[seed])
    colour = mean[seed] * area[seed]
    frontier = set(adjacency[seed])
    while total < target_area and frontier:
        cand = np.fromiter(frontier, dtype=np.int64)
        if rng.random() < greed:
            d = np.linalg.norm(mean[cand] - colour / total, axis=1)
            pick = int(cand[int(np.argmin(d))])
        else:
            pick = int(cand[int(rng.integers(len(cand)))])
        region.append(pick)
        inside.add(pick)
        total += float(area[pick])
        colour = colour + mean[pick] * area[pick]
        frontier.discard(pick)
        frontier.update(v for v in adjacency[pick] if v not in inside)
    return region


def _clean(mask: np.ndarray, min_hole: int) -> np.ndarray:
    """Largest 4-connected component of ``mask`` (bool) with holes smaller than ``min_hole`` filled."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros_like(mask)
    keep = comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    n, holes, stats, _ = cv2.connectedComponentsWithStats((~keep).astype(np.uint8), connectivity=4)
    small = np.zeros(n, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] < min_hole
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small[border] = False  # the background touching the image border is never a hole
    return keep | small[holes]


MIN_CONTRAST = 2.5


def region_masks(image: np.ndarray, rng: np.random.Generator, count: int = 1,
                 area_range: tuple[float, float] = (0.03, 0.35), tries: int = 8,
                 min_contrast: float = MIN_CONTRAST) -> list[np.ndarray]:
    """Up to ``count`` object-sized regions of ``image`` ((H, W, 3) uint8 RGB), each an (H, W)
    uint8 {0, 255} truth, from one segmentation.

    Felzenszwalb scale U(150, 700) (x sqrt(image size / 1 Mpx), so segments are comparable
    across sizes), min segment size 0.02% of the image; each region's target area is
    U(area_range) of the image. Holes below 0.2% of the image are filled and only the largest
    component is kept; a region outside 0.5x-2x of its target area, or whose boundary does not
    lie on strong edges (:func:`boundary_contrast` < ``min_contrast``: a cut through texture or a
    smooth gradient, whose "truth" no refiner could find), is redrawn (``tries`` seeds each).
    """
    h, w = image.shape[:2]
    npx = h * w
    scale = float(rng.uniform(150, 700)) * max(0.5, npx / 1e6) ** 0.5
    labels = segment_labels(image, scale=scale, sigma=0.8, min_size=max(16, int(npx * 2e-4)))
    area, mean, adjacency = segment_graph(labels, image)
    out: list[np.ndarray] = []
    for _ in range(count * tries):
        if len(out) == count:
            break
        target = float(rng.uniform(*area_range)) * npx
        small = np.nonzero(area < target)[0]
        if not len(small):
            continue
        region = grow_region(area, mean, adjacency, int(rng.choice(small)), target, rng)
        mask = _clean(np.isin(labels, region), max(16, int(npx * 2e-3)))
        got = float(mask.sum())
        if 0.5 * target <= got <= 2.0 * target and got < 0.9 * npx:
            m = np.where(mask, 255, 0).astype(np.uint8)
            if boundary_contrast(image, m) >= min_contrast:
                out.append(m)
    return out


def boundary_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How much the boundary of ``mask`` ((H, W) uint8) lies on strong edges of ``image`` (RGB):
    the mean colour-gradient magnitude (CIELAB, Sobel after a 3 x 3 blur) on the mask's boundary
    pixels over its mean on the whole image. ~1 for a cut through texture; >> 1 on object edges.
    """
    from pipeline.sam.regions import colour_gradient

    grad = colour_gradient(image)
    edge = cv2.morphologyEx((mask > 128).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    if not edge.any():
        return 0.0
    return float(grad[edge].mean() / max(float(grad.mean()), 1e-6))
