"""``regions``: a "segment everything" proposal source that needs no weights.

Same interface as SAM's generator (`RegionGenerator.generate(image) -> SamMasks`), so the colour
map, the label map and the SAM-SR-v1 merge (`pipeline.sam.proposals`, `pipeline.sam.merge`) take
its masks unchanged. The algorithm, all classical and deterministic:

1. **Fine segments.** The image (already at the proposal working size, long side 1024) is
   area-resized to ``segment_size`` on its long side (512 by default: scikit-image's
   Felzenszwalb takes ~0.5 s there and ~3.3 s at 1024 on one CPU core) and cut by
   Felzenszwalb's graph segmentation (``scale`` x sqrt(pixels / 2^18), ``sigma``, minimum
   segment ``min_segment`` of the image). Segment boundaries are where neighbouring pixels
   differ most: real edges of the photograph.
2. **A hierarchy, like SAM's whole / part / sub-part masks.** Adjacent segments are merged
   agglomeratively with Ward's criterion on mean CIELAB colour (cost = |a||b| / (|a| + |b|) x
   colour distance^2: small and similar neighbours first). The segmentation is recorded at
   ``levels`` points: the fine segments, then after the count fell by ``merge_factor``, again by
   ``merge_factor``, ... Each region of each level with at least ``min_area`` of the image is a
   mask; a region that did not change since the previous level is not repeated.
3. **Scores.** ``scores`` (SAM: predicted IoU) is the region's boundary contrast c (mean colour
   gradient on its boundary over the image's mean gradient, see
   `pipeline.train.regions.boundary_contrast`) mapped to c / (1 + c): ~0.5 for a cut through
   texture, -> 1 on strong edges. ``stability`` is the share of the region already present as
   one region one level finer (1.0 for a fine segment): how persistent the region is.
4. Label maps are resized back to the input size with nearest neighbour, so masks, colour map
   and label map are at the working size like SAM's.

Pure numpy / cv2 / scikit-image; no I/O.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from pipeline.sam.generator import SamMasks

__all__ = ["RegionGenerator", "RegionSettings", "colour_gradient", "region_hierarchy"]

ALGORITHMS = ("felzenszwalb",)


@dataclass(frozen=True)
class RegionSettings:
    """Parameters of the ``regions`` proposal source (config section ``regions``)."""

    algorithm: str = "felzenszwalb"
    segment_size: int = 512  # long side at which the image is segmented
    scale: float = 100.0  # Felzenszwalb scale at 512 x 512 pixels (scaled by sqrt(pixels / 2^18))
    sigma: float = 0.8  # Felzenszwalb's pre-smoothing
    min_segment: float = 0.0005  # smallest fine segment, fraction of the image
    levels: int = 4  # segmentations kept: fine, then each merge_factor times fewer regions
    merge_factor: float = 3.0
    min_area: float = 0.001  # smallest region that becomes a mask, fraction of the image

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: must be one of {', '.join(ALGORITHMS)} (got {self.algorithm!r})")
        checks = {
            "segment_size": self.segment_size >= 16,
            "scale": self.scale > 0,
            "sigma": self.sigma >= 0,
            "min_segment": 0 < self.min_segment < 1,
            "levels": self.levels >= 1,
            "merge_factor": self.merge_factor > 1,
            "min_area": 0 <= self.min_area < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")

    def describe(self) -> str:
        """What the manifest's ``sam_model`` column records, e.g. ``regions:felzenszwalb``."""
        return f"regions:{self.algorithm}"

    def digest(self) -> str:
        """16 hex chars of sha256 over the settings (the manifest's ``sam_hash`` for regions)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _fine_segments(image: np.ndarray, s: RegionSettings) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    npx = image.shape[0] * image.shape[1]
    scale = s.scale * (npx / 2**18) ** 0.5
    labels = felzenszwalb(image, scale=scale, sigma=s.sigma, min_size=max(4, int(s.min_segment * npx)))
    return labels.astype(np.int32)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """(E, 2) unique pairs (a < b) of 4-adjacent labels."""
    pairs = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        diff = a != b
        pairs.append(np.stack([a[diff], b[diff]], axis=1))
    both = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(both, axis=0) if len(both) else both.reshape(0, 2)


def region_hierarchy(labels: np.ndarray, image: np.ndarray, levels: int,
                     merge_factor: float) -> list[np.ndarray]:
    """Ward merging of the segments of ``labels`` ((h, w) int 0..n-1) by mean CIELAB colour.

    Returns ``levels`` lookup tables (each (n,) int64: fine segment -> region id at that level,
    ids = the smallest fine segment id of the region), the first the identity; level k is
    recorded when the region count first drops to n / merge_factor^k or below (fewer levels when
    everything merged into one region first).
    """
    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    colour_sum = np.stack([np.bincount(flat, weights=lab[:, c], minlength=n) for c in range(3)], 1)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for u, v in _adjacent_pairs(labels).tolist():
        neighbours[u].add(v)
        neighbours[v].add(u)
    parent = np.arange(n)
    alive = area > 0
    version = np.zeros(n, dtype=np.int64)

    def cost(a: int, b: int) -> float:
        d = colour_sum[a] / area[a] - colour_sum[b] / area[b]
        return float(area[a] * area[b] / (area[a] + area[b]) * (d @ d))

    heap = [(cost(a, b), a, b, 0, 0) for a in range(n) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    tables = [np.arange(n, dtype=np.int64)]
    count = int(alive.sum())
    target = count / merge_factor
    while len(tables) < levels and heap:
        c, a, b, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb:
            continue
        keep, gone = (a, b) if a < b else (b, a)
        parent[gone] = keep
        alive[gone] = False
        area[keep] += area[gone]
        colour_sum[keep] += colour_sum[gone]
        version[keep] += 1
        neighbours[keep] |= neighbours[gone]
        neighbours[keep] -= {keep, gone}
        for v in neighbours[gone]:
            if v != keep:
                neighbours[v].discard(gone)
                neighbours[v].add(keep)
        neighbours[gone] = set()
        for v in neighbours[keep]:
            heapq.heappush(heap, (cost(keep, v), keep, v, version[keep], version[v]))
        count -= 1
        if count <= target or count == 1:
            root = parent.copy()
            while True:  # path compression to the representatives
                nxt = root[root]
                if np.array_equal(nxt, root):
                    break
                root = nxt
            tables.append(root)
            target = count / merge_factor
            if count == 1:
                break
    return tables


def colour_gradient(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 colour-gradient magnitude of RGB ``image``: Sobel on CIELAB after a 3 x 3
    blur (the edge strength behind the regions' scores and the training regions' contrast)."""
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (3, 3), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    grad = np.zeros(image.shape[:2], np.float32)
    for c in range(3):
        gx = cv2.Sobel(lab[..., c], cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(lab[..., c], cv2.CV_32F, 0, 1, ksize=3)
        grad += gx * gx + gy * gy
    return np.sqrt(grad)


def _edge_pixels(labels: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels with a 4-neighbour of another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:] != labels[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


def _boxes(labels: np.ndarray, k: int) -> np.ndarray:
    """(k, 4) int64 XYXY inclusive box of each label 0..k-1 of (h, w) ``labels``."""
    h, w = labels.shape
    rows = np.zeros((k, h), dtype=bool)
    cols = np.zeros((k, w), dtype=bool)
    rows[labels, np.arange(h)[:, None]] = True
    cols[labels, np.arange(w)[None, :]] = True
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1, x1 = h - 1 - rows[:, ::-1].argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], 1).astype(np.int64)


class RegionGenerator:
    """The ``regions`` proposal source: ``generate(image)`` -> `SamMasks` (see module docstring).

    ``last_stats`` after a call: fine segment count, masks per level and seconds per step.
    """

    def __init__(self, settings: RegionSettings | None = None) -> None:
        self.settings = settings or RegionSettings()
        self.last_stats: dict = {}

    def generate(self, image: np.ndarray) -> SamMasks:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        import time

        s = self.settings
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        f = min(1.0, s.segment_size / max(h, w))
        sh, sw = max(1, round(h * f)), max(1, round(w * f))
        small = image if (sh, sw) == (h, w) else cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        fine = _fine_segments(small, s)
        t1 = time.perf_counter()
        tables = region_hierarchy(fine, small, s.levels, s.merge_factor)
        grad = colour_gradient(image)
        mean_grad = max(float(grad.mean()), 1e-6)
        min_px = s.min_area * h * w
        masks, mask_areas, scores, stability, boxes, points, per_level = [], [], [], [], [], [], []
        fine_full = fine if (sh, sw) == (h, w) else cv2.resize(fine, (w, h), interpolation=cv2.INTER_NEAREST)
        flat = fine_full.ravel()
        n_fine = int(fine.max()) + 1
        fine_area = np.bincount(flat, minlength=n_fine)
        ys, xs = np.indices((h, w))
        fine_y = np.bincount(flat, weights=ys.ravel(), minlength=n_fine)
        fine_x = np.bincount(flat, weights=xs.ravel(), minlength=n_fine)
        prev_of_fine: np.ndarray | None = None
        prev_area: np.ndarray | None = None
        for table in tables:
            ids, of_fine = np.unique(table, return_inverse=True)  # fine segment -> region 0..k-1
            k = len(ids)
            inverse = of_fine[fine_full]
            areas = np.bincount(of_fine, weights=fine_area, minlength=k)
            edge = _edge_pixels(inverse)
            edge_sum = np.bincount(inverse[edge], weights=grad[edge], minlength=k)
            edge_cnt = np.bincount(inverse[edge], minlength=k)
            contrast = edge_sum / np.maximum(edge_cnt, 1) / mean_grad
            if prev_of_fine is None:
                persist = np.ones(k)
            else:  # regions nest: the largest finer-level region inside each region, over its area
                persist = np.zeros(k)
                finer = np.zeros(int(prev_of_fine.max()) + 1, dtype=np.int64)
                finer[prev_of_fine] = of_fine
                np.maximum.at(persist, finer, prev_area)
                persist = persist / areas
            new = (areas >= max(min_px, 1)) & (areas < h * w)  # the whole image is not a proposal
            if prev_of_fine is not None:
                new &= persist < 1.0  # unchanged since the finer level: already a mask
            sel = np.flatnonzero(new)
            if len(sel):
                masks.extend((inverse, int(i)) for i in sel)
                mask_areas.append(areas[sel])
                scores.append(contrast[sel] / (1.0 + contrast[sel]))
                stability.append(persist[sel])
                boxes.append(_boxes(inverse, k)[sel])
                cy = np.bincount(of_fine, weights=fine_y, minlength=k) / areas
                cx = np.bincount(of_fine, weights=fine_x, minlength=k) / areas
                points.append(np.stack([cx[sel], cy[sel]], 1))
            per_level.append(len(sel))
            prev_of_fine, prev_area = of_fine, areas
        t2 = time.perf_counter()
        self.last_stats = {"fine_segments": int(fine.max()) + 1, "masks_per_level": per_level,
                           "segment_s": t1 - t0, "hierarchy_s": t2 - t1}
        n = len(masks)
        if not n:
            return SamMasks(masks=np.zeros((0, h, w), dtype=bool), scores=np.zeros(0, np.float32),
                            stability=np.zeros(0, np.float32), areas=np.zeros(0, np.int64),
                            boxes=np.zeros((0, 4), np.int64), points=np.zeros((0, 2)),
                            crop_boxes=np.zeros((0, 4), np.int64))
        areas = np.concatenate(mask_areas).astype(np.int64)
        order = np.argsort(-areas, kind="stable")  # paint order, as SAM's proposals are sorted
        out = np.empty((n, h, w), dtype=bool)
        for j, o in enumerate(order):
            inv, i = masks[o]
            np.equal(inv, i, out=out[j])
        self.last_stats["total_s"] = time.perf_counter() - t0
        return SamMasks(
            masks=out, scores=np.concatenate(scores)[order].astype(np.float32),
            stability=np.concatenate(stability)[order].astype(np.float32),
            areas=areas[order], boxes=np.concatenate(boxes)[order],
            points=np.concatenate(points)[order].astype(np.float64),
            crop_boxes=np.tile(np.array([[0, 0, w, h]], np.int64), (n, 1)),
        )
