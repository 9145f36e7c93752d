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

from pipeline.boundary import rgb_gradient, signed_distance
from pipeline.sam.regions import colour_gradient
from pipeline.train.perturb import mask_iou

__all__ = ["segment_labels", "segment_graph", "grow_region", "region_masks", "boundary_contrast",
           "largest_piece", "fill_weak_holes", "snap_region", "signed_distance", "edge_profile",
           "edge_offset", "stronger_edge_nearby", "snap_to_edge", "local_edge_offset", "snap_locally",
           "SNAPS"]


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


def largest_piece(mask: np.ndarray, min_hole: int) -> np.ndarray:
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


def fill_weak_holes(mask: np.ndarray, grad: np.ndarray, min_contrast: float) -> np.ndarray:
    """``mask`` ((H, W) bool) with every hole filled whose own boundary does not lie on strong edges:
    the mean of ``grad`` ((H, W), e.g. :func:`pipeline.sam.regions.colour_gradient`) on the hole's
    boundary ring (its pixels and the mask's pixels next to it) under ``min_contrast`` times the
    image mean — a patch of texture or shading that the merge happened to skip, not a hole an
    annotator would draw. Holes with strong boundaries (a real opening) are kept."""
    n, holes, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    if n <= 2:
        return mask
    h, w = mask.shape
    border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])).tolist())
    floor = min_contrast * max(float(grad.mean()), 1e-6)
    out = mask.copy()
    ring_kernel = np.ones((3, 3), np.uint8)
    for i in range(1, n):
        if i in border:
            continue
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        y0, y1, x0, x1 = max(0, y - 1), min(h, y + bh + 1), max(0, x - 1), min(w, x + bw + 1)
        hole = (holes[y0:y1, x0:x1] == i).astype(np.uint8)
        ring = cv2.morphologyEx(hole, cv2.MORPH_GRADIENT, ring_kernel) > 0
        if float(grad[y0:y1, x0:x1][ring].mean()) < floor:
            out[y0:y1, x0:x1] |= hole > 0
    return out


MIN_CONTRAST = 2.5
MAX_EDGE_OFFSET = 0.5
#: px: how far from a snapped boundary :func:`stronger_edge_nearby` looks for a stronger edge
FAR_EDGE_RADIUS = 6
MAX_OVERLAP = 0.9


def region_masks(image: np.ndarray, rng: np.random.Generator, count: int = 1,
                 area_range: tuple[float, float] = (0.03, 0.35), tries: int = 8,
                 min_contrast: float = MIN_CONTRAST,
                 max_edge_offset: float | None = MAX_EDGE_OFFSET, snap: str = "local",
                 fill_weak: bool = False) -> list[np.ndarray]:
    """Up to ``count`` object-sized regions of ``image`` ((H, W, 3) uint8 RGB), each an (H, W)
    uint8 {0, 255} truth, from one segmentation.

    Felzenszwalb scale U(150, 700) (x sqrt(image size / 1 Mpx), so segments are comparable
    across sizes), min segment size 0.02% of the image; each region's target area is
    U(area_range) of the image. Holes below 0.2% of the image are filled (with ``fill_weak``, also
    holes whose own boundary is weak, :func:`fill_weak_holes` at ``min_contrast``: off by default;
    one run on such truth measured no better, see the model card); only the largest component is
    kept; a region outside 0.5x-2x of its target area, or whose boundary does not lie on strong
    edges (:func:`boundary_contrast` < ``min_contrast``: a cut through texture or a smooth
    gradient, whose "truth" no refiner could find), is redrawn (``tries`` seeds each).
    With ``max_edge_offset`` (default 0.5 px) each region is snapped to the image's edges and
    redrawn when its boundary is still farther than that from the edge centre on average, or when
    a stronger edge runs 3-6 px beside it (:func:`stronger_edge_nearby`: snapped onto a weak edge
    next to the object's real one); None
    keeps Felzenszwalb's boundary as is (after snapping, the largest component is kept and small
    holes filled again). A region whose IoU with one already returned exceeds 0.9 is redrawn (two
    seeds can grow the same region). ``snap``: ``local`` (default, :func:`snap_locally`: each
    boundary stretch onto its own edge, stretches without a clear edge left alone) or ``global``
    (:func:`snap_to_edge`: the whole boundary by one rounded mean offset; sets built before
    2026-12-05).
    """
    if snap not in SNAPS:
        raise ValueError(f"region_masks: snap must be one of {tuple(SNAPS)}, got {snap!r}")
    h, w = image.shape[:2]
    npx = h * w
    scale = float(rng.uniform(150, 700)) * max(0.5, npx / 1e6) ** 0.5
    labels = segment_labels(image, scale=scale, sigma=0.8, min_size=max(16, int(npx * 2e-4)))
    area, mean, adjacency = segment_graph(labels, image)
    grad = colour_gradient(image)
    min_hole = max(16, int(npx * 2e-3))
    out: list[np.ndarray] = []
    for _ in range(count * tries):
        if len(out) == count:
            break
        target = float(rng.uniform(*area_range)) * npx
        small = np.nonzero(area < target)[0]
        if not len(small):
            continue
        region = grow_region(area, mean, adjacency, int(rng.choice(small)), target, rng)
        mask = largest_piece(np.isin(labels, region), min_hole)
        if fill_weak:
            mask = fill_weak_holes(mask, grad, min_contrast)
        got = float(mask.sum())
        if 0.5 * target <= got <= 2.0 * target and got < 0.9 * npx:
            m = np.where(mask, 255, 0).astype(np.uint8)
            if _contrast(grad, m) < min_contrast:
                continue
            if max_edge_offset is not None:
                m, left = snap_region(image, m, snap)
                if not abs(left) <= max_edge_offset or stronger_edge_nearby(image, m):
                    continue
            if any(mask_iou(m, o) > MAX_OVERLAP for o in out):
                continue  # another seed grew (nearly) the same region: one copy is enough
            out.append(m)
    return out


def snap_region(image: np.ndarray, mask: np.ndarray, snap: str = "local") -> tuple[np.ndarray, float]:
    """``mask`` ((H, W) uint8) moved onto the edges of ``image`` by the snap named ``snap``
    (:data:`SNAPS`), then cleaned as :func:`region_masks` cleans a region (the largest component,
    holes under 0.2% of the image filled: moving boundary stretches can pinch off specks and open
    pinholes). Returns (mask (H, W) uint8 {0, 255}, the snap's remaining mean offset in px)."""
    if snap not in SNAPS:
        raise ValueError(f"snap_region: snap must be one of {tuple(SNAPS)}, got {snap!r}")
    moved, left = SNAPS[snap](image, mask)
    min_hole = max(16, int(mask.size * 2e-3))
    return np.where(largest_piece(moved > 128, min_hole), 255, 0).astype(np.uint8), left


def _contrast(grad: np.ndarray, mask: np.ndarray) -> float:
    edge = cv2.morphologyEx((mask > 128).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    if not edge.any():
        return 0.0
    return float(grad[edge].mean() / max(float(grad.mean()), 1e-6))


def boundary_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How much the boundary of ``mask`` ((H, W) uint8) lies on strong edges of ``image`` (RGB):
    the mean colour-gradient magnitude (CIELAB, Sobel after a 3 x 3 blur) on the mask's boundary
    pixels over its mean on the whole image. ~1 for a cut through texture; >> 1 on object edges.
    """
    return _contrast(colour_gradient(image), mask)


def edge_profile(image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Mean gradient magnitude (Sobel on the RGB values as floats: linear, so a symmetric edge
    gives a symmetric profile; over its image mean) along the boundary of ``mask`` moved by
    d = -radius..radius pixels, as a (2 * radius + 1,) array. Each pixel's signed Euclidean
    distance s to the boundary (which lies half-way between the last pixels inside, s = -0.5, and
    the first outside, s = +0.5) weighs it by max(0, 1 - |s - d|), so a mask whose boundary lies
    on the centre of an edge peaks at d = 0.
    NaN where no pixel is that far from the boundary."""
    grad = rgb_gradient(image).astype(np.float64)
    mean = max(float(grad.mean()), 1e-6)
    dist = signed_distance(mask)
    near = np.abs(dist) < radius + 1
    dist, g = dist[near], grad[near]
    out = []
    for d in range(-radius, radius + 1):
        w = np.maximum(0.0, 1.0 - np.abs(dist - d))
        out.append(float((w * g).sum() / w.sum() / mean) if w.sum() > 0 else np.nan)
    return np.asarray(out, dtype=np.float64)


def stronger_edge_nearby(image: np.ndarray, mask: np.ndarray, radius: int = FAR_EDGE_RADIUS) -> bool:
    """True when the image's edge along the boundary of ``mask`` moved by some 3 <= |d| <= ``radius``
    px is stronger than along the boundary itself (:func:`edge_profile`): the boundary sits on a weak
    edge beside the strong one (a shading band next to a sharp object edge), and is no truth."""
    p = edge_profile(image, mask, radius)
    far = np.r_[p[: radius - 2], p[radius + 3:]]
    far = far[np.isfinite(far)]
    return bool(far.size) and bool(far.max() > p[radius])


def edge_offset(image: np.ndarray, mask: np.ndarray, radius: int = 3) -> float:
    """Where the image's edge lies relative to the boundary of ``mask``, in pixels (sub-pixel: a
    parabola through the peak of :func:`edge_profile` and its neighbours): 0 when the boundary is
    on the edge's centre, > 0 when the edge lies outside the mask (the mask is too small), < 0
    inside. NaN when the mask has no boundary."""
    p = edge_profile(image, mask, radius)
    if np.isnan(p).all():
        return float("nan")
    i = int(np.nanargmax(p))
    if 0 < i < len(p) - 1 and np.isfinite(p[i - 1]) and np.isfinite(p[i + 1]):
        a, b, c = p[i - 1], p[i], p[i + 1]
        denom = a - 2 * b + c
        frac = 0.5 * (a - c) / denom if denom < 0 else 0.0
    else:
        frac = 0.0
    return float(i - radius + frac)


def snap_to_edge(image: np.ndarray, mask: np.ndarray, max_shift: int = 2,
                 radius: int = 3) -> tuple[np.ndarray, float]:
    """Move the whole boundary of ``mask`` by the whole number of pixels nearest to its
    :func:`edge_offset` (at most ``max_shift``), so that it lies on the centre of the image's
    edge up to half a pixel on average. Returns (mask (H, W) uint8 {0, 255}, the offset left).

    Felzenszwalb's regions put their boundary where neighbouring pixels differ most *after* its
    Gaussian pre-smoothing and merges; measured on this project's data, the edge's centre lies
    0.3-0.6 px outside such a region on average (+-1 px per region), where a composite's exact
    truth is within 0.05 px: a refiner trained on unsnapped regions learns to erode.
    """
    offset = edge_offset(image, mask, radius)
    binary = np.where(mask > 128, 255, 0).astype(np.uint8)
    if not np.isfinite(offset):
        return binary, offset
    shift = int(np.clip(np.round(offset), -max_shift, max_shift))
    if shift == 0:
        return binary, offset
    moved = np.where(signed_distance(binary) < shift, 255, 0).astype(np.uint8)
    return moved, edge_offset(image, moved, radius)


def local_edge_offset(image: np.ndarray, mask: np.ndarray, radius: int = 3, sigma: float = 6.0,
                      min_peak: float = 2.0, min_contrast: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel :func:`edge_offset`: where the image's edge lies relative to each *stretch* of the
    boundary of ``mask``, in pixels (> 0: outside the mask), and where a clear edge was found.

    The profile of :func:`edge_profile` is gathered locally: the weighted gradient sums of each
    shift d = -radius..radius are Gaussian-blurred (``sigma`` px, about a boundary stretch of
    2.5 sigma on each side) before the division, so every pixel near the boundary sees the profile
    of the stretch next to it. A stretch has a clear edge when its profile's peak is at least
    ``min_peak`` times the image's mean gradient and ``min_contrast`` times the profile's lower end
    and lies inside the searched range (not at +-radius); elsewhere (a weak or textured stretch,
    or an edge farther than ``radius``) the offset is 0. Returns ((H, W) float32 offsets,
    (H, W) bool clear-edge map), both only meaningful within ``radius`` px of the boundary.
    """
    grad = rgb_gradient(image)
    grad /= max(float(grad.mean()), 1e-6)
    dist = signed_distance(mask)
    near = (np.abs(dist) < radius + 1).astype(np.float32)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    prof = []
    for d in range(-radius, radius + 1):
        w = np.maximum(0.0, 1.0 - np.abs(dist - d)) * near
        prof.append(blur(w * grad) / np.maximum(blur(w), 1e-6))
    p = np.stack(prof)  # (2r+1, H, W)
    i = np.argmax(p, axis=0)
    peak = np.take_along_axis(p, i[None], 0)[0]
    a = np.take_along_axis(p, np.clip(i - 1, 0, 2 * radius)[None], 0)[0]
    c = np.take_along_axis(p, np.clip(i + 1, 0, 2 * radius)[None], 0)[0]
    denom = a - 2 * peak + c
    frac = np.where(denom < 0, 0.5 * (a - c) / np.where(denom < 0, denom, -1.0), 0.0)
    offset = (i - radius + np.clip(frac, -0.5, 0.5)).astype(np.float32)
    clear = (peak >= min_peak) & (peak >= min_contrast * p.min(axis=0)) & (i > 0) & (i < 2 * radius)
    return np.where(clear, offset, 0.0).astype(np.float32), clear


def snap_locally(image: np.ndarray, mask: np.ndarray, max_shift: float = 2.0, radius: int = 3,
                 sigma: float = 6.0) -> tuple[np.ndarray, float]:
    """Move each stretch of the boundary of ``mask`` onto the centre of the image's edge next to
    it (:func:`local_edge_offset`, at most ``max_shift`` px) and leave stretches without a clear
    edge where they are. Returns (mask (H, W) uint8 {0, 255}, the whole boundary's
    :func:`edge_offset` left after the move).

    :func:`snap_to_edge` moves the whole boundary by one rounded mean offset, so a region whose
    strong edges lie a pixel outside is also grown by a pixel along its weak stretches, where no
    edge says where the truth is; a refiner trained on such truth learns to grow boundaries that
    have no edge. Here the new boundary is the zero level of ``signed_distance - offset``: the
    offset field is smooth along the boundary, so the moved boundary stays smooth.
    """
    binary = np.where(mask > 128, 255, 0).astype(np.uint8)
    if not binary.any() or binary.all():
        return binary, float("nan")
    offset, _ = local_edge_offset(image, binary, radius=radius, sigma=sigma)
    offset = np.clip(offset, -max_shift, max_shift)
    moved = np.where(signed_distance(binary) < offset, 255, 0).astype(np.uint8)
    return moved, edge_offset(image, moved, radius)


# How real-edge truth is moved onto the photo's edges, by name (`region_masks(snap=...)`,
# `python -m jobs.make_demo_data --snap`).
SNAPS = {"local": snap_locally, "global": snap_to_edge}
