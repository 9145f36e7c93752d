"""Edge check (`RefineOptions.edge_check`): keep a refined change only where the image says so.

A refiner that moves a mask's line by a pixel or two helps a rough mask and harms a good one in
the same way; what tells the two apart is whether the moved line sits on a stronger image edge
than the old one. Here:

- the *line* of a mask runs between 4-neighbour pixel pairs on opposite sides of it; a pair's
  *contrast* is the Euclidean distance of their RGB values (0..441.7), credited to both pixels;
- a *change* is a connected component (8-connected) of the pixels the refiner added, or of those
  it removed (refined > 0.5 vs coarse > 0.5); its *region* is the component grown by ``grow``
  pixels (a square);
- a change is kept when the mean contrast of the refined line within its region is at least (1 +
  ``margin``) times that of the coarse line within it. Where only the refined line passes through
  the region (an island or hole the refiner made), it must reach (1 + ``margin``) times the mean
  contrast of every pixel pair in the region (a line put there at random); where only the coarse
  line does (an island removed, a hole filled), the change is kept unless the coarse line's
  contrast exceeds (1 + ``margin``) times that mean (it lay on a real edge); ties keep the change;
- a change that is not kept takes the coarse mask's values back.

Pure numpy / OpenCV; works on the bounding box of the changes only, and the contrasts are
gathered for the changed pixels and their rings alone, a strip of rows at a time
(:func:`region_line_means`: a few bytes per pixel of the box).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["line_contrast", "label_strips", "line_credits", "region_line_means", "edge_check"]


_CHUNK_ROWS = 512  # rows of the image converted to float at a time (whole-image floats: 12 B/px)


def _pair_contrast(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W-1) contrast of each horizontal pair, (H-1, W) of each vertical pair (float32),
    computed in row chunks (the same elementwise float32 operations as over the whole image)."""
    h, w = image.shape[:2]
    horizontal = np.empty((h, w - 1), np.float32)
    vertical = np.empty((max(h - 1, 0), w), np.float32)
    for r0 in range(0, h, _CHUNK_ROWS):
        r1 = min(h, r0 + _CHUNK_ROWS)
        f = image[r0 : r1 + 1].astype(np.float32)  # one row more: the vertical pairs across chunks
        horizontal[r0:r1] = np.sqrt(np.square(f[: r1 - r0, 1:] - f[: r1 - r0, :-1]).sum(-1))
        vertical[r0 : min(r1, h - 1)] = np.sqrt(np.square(f[1:] - f[:-1]).sum(-1))
    return horizontal, vertical


def _grown_labels(labels: np.ndarray, n: int, kernel: np.ndarray) -> np.ndarray:
    """The largest label within ``kernel`` of each pixel (a grey dilation of the (H, W) int32 label
    map), dilated in the smallest type OpenCV dilates that holds every label exactly."""
    if n < 2**16:
        return cv2.dilate(labels.astype(np.uint16), kernel)
    if n < 2**24:
        return cv2.dilate(labels.astype(np.float32), kernel).astype(np.int32)
    return cv2.dilate(labels.astype(np.float64), kernel).astype(np.int64)


def _credit(horizontal: np.ndarray, vertical: np.ndarray, cross_h: np.ndarray | None,
            cross_v: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: sum (float32) and count (uint8, at most 4) of the contrasts of the pairs (all, or
    those where ``cross_*`` is True) that touch it."""
    h, w = vertical.shape[0] + 1, horizontal.shape[1] + 1
    total = np.zeros((h, w), np.float32)  # sums of <= 4 contrasts of <= 441.7: float32 is plenty
    count = np.zeros((h, w), np.uint8)
    for c, sel, a, b in ((horizontal, cross_h, (slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                         (vertical, cross_v, (slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        value = c if sel is None else c * sel
        n = 1 if sel is None else sel
        for side in (a, b):
            total[side] += value
            count[side] += n
    return total, count


def line_contrast(mask: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of a (H, W) bool mask: the sum and the number of contrasts of the mask's line
    pairs touching that pixel (see the module docstring); image (H, W, 3) uint8."""
    horizontal, vertical = _pair_contrast(image)
    return _credit(horizontal, vertical, mask[:, 1:] != mask[:, :-1], mask[1:] != mask[:-1])


_STRIP_ROWS = 256  # rows of a box whose labelled pixels are gathered at a time


def label_strips(labels: np.ndarray, origin: tuple[int, int]):
    """For each strip of rows of ``labels`` ((h, w) labels of a box at ``origin`` in the image; 0: no
    label) that has labelled pixels: (their labels in flat order (intp), their (rows, cols) in the
    image). Strip after strip, the pixels come in the order of one pass over the box."""
    w = labels.shape[1]
    for s0 in range(0, labels.shape[0], _STRIP_ROWS):
        part = labels[s0 : s0 + _STRIP_ROWS]
        where = np.flatnonzero(part)
        if where.size:
            yield part.ravel()[where].astype(np.intp), (where // w + s0 + origin[0], where % w + origin[1])


def line_credits(image: np.ndarray, before: np.ndarray, after: np.ndarray, at: tuple[np.ndarray, np.ndarray],
                 box: tuple[int, int, int, int]):
    """For the pixels ``at`` ((rows, cols) in the image, inside ``box`` = (r0, c0, r1, c1)): per
    pixel the (sum float32, count uint8) of the contrasts of the 4-neighbour pixel pairs touching it
    (pairs inside the box only) that cross the old line (``before``, (H, W) bool), the new one
    (``after``), and of every pair: the values :func:`_credit` gives over the whole box, from the
    same float32 contrasts added in the same order (left, right, up, down pair), gathered for those
    pixels alone."""
    r0, c0, r1, c1 = box
    r, c = at
    colour = image[at].astype(np.float32)
    b, a = before[at], after[at]
    m = len(r)
    sums = [np.zeros(m, np.float32) for _ in range(3)]
    counts = [np.zeros(m, np.uint8) for _ in range(3)]
    for valid, dr, dc in ((c > c0, 0, -1), (c < c1 - 1, 0, 1), (r > r0, -1, 0), (r < r1 - 1, 1, 0)):
        i = np.flatnonzero(valid)
        q = (r[i] + dr, c[i] + dc)
        other = image[q].astype(np.float32)
        diff = other - colour[i] if dr + dc > 0 else colour[i] - other  # as _pair_contrast
        contrast = np.sqrt(np.square(diff).sum(-1))
        for j, sel in enumerate((b[i] != before[q], a[i] != after[q], None)):
            sums[j][i] += contrast if sel is None else contrast * sel
            counts[j][i] += 1 if sel is None else sel
    return tuple(zip(sums, counts))


def region_line_means(image: np.ndarray, before: np.ndarray, after: np.ndarray, region: np.ndarray,
                      n: int, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per label 0..n-1 of ``region`` ((h, w) labels of a box at ``origin`` in the image; 0: no
    label): the mean contrast (3, n) and the count (3, n) of the pixel pairs touching its pixels
    that cross the old line, the new one, and of every pair (:func:`line_credits`; label 0's
    entries are not meaningful). Gathered by :func:`label_strips` and summed in the order of one
    pass over the box: the same values as per-label sums of the dense :func:`_credit` maps."""
    box = (origin[0], origin[1], origin[0] + region.shape[0], origin[1] + region.shape[1])
    sums, counts = np.zeros((3, n)), np.zeros((3, n))
    for labels, at in label_strips(region, origin):
        for j, (total, count) in enumerate(line_credits(image, before, after, at, box)):
            np.add.at(sums[j], labels, total.astype(np.float64))
            np.add.at(counts[j], labels, count.astype(np.float64))
    return sums / np.maximum(counts, 1), counts


def edge_check(prob: np.ndarray, coarse: np.ndarray, image: np.ndarray, margin: float, grow: int = 1) -> int:
    """In place on ``prob`` (H, W) float probabilities: every change from ``coarse`` (H, W) float
    in [0, 1] that the image does not support (module docstring) takes the coarse values back.
    image: (H, W, 3) uint8. Returns the number of changes undone."""
    if margin < 0 or grow < 0:
        raise ValueError(f"edge_check: margin {margin} and grow {grow} must be >= 0")
    if prob.shape != coarse.shape or prob.shape != image.shape[:2]:
        raise ValueError(f"edge_check: shapes differ: prob {prob.shape}, coarse {coarse.shape}, "
                         f"image {image.shape}")
    before, after = coarse > 0.5, prob > 0.5
    changed = before != after
    if not changed.any():
        return 0
    rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
    pad = grow + 1
    r0, r1 = max(0, rows[0] - pad), min(prob.shape[0], rows[-1] + pad + 1)
    c0, c1 = max(0, cols[0] - pad), min(prob.shape[1], cols[-1] + pad + 1)
    box = (slice(r0, r1), slice(c0, c1))
    if min(r1 - r0, c1 - c0) < 2:
        return 0  # no pixel pairs on one axis: nothing to judge by
    b, a = before[box], after[box]
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    undone = 0
    for part in (a & ~b, b & ~a):
        n, labels = cv2.connectedComponents(part.view(np.uint8), connectivity=8)
        if n <= 1:
            continue
        region = _grown_labels(labels, n, kernel)  # a nearby label
        np.copyto(region, labels, where=labels > 0, casting="unsafe")
        (old_mean, new_mean, any_mean), (old_n, new_n, _) = region_line_means(
            image, before, after, region, n, (r0, c0))
        del region
        # ties (a flat region: every contrast 0) keep the change
        keep = np.where((old_n > 0) & (new_n > 0), new_mean >= old_mean * (1 + margin),
                        np.where(new_n > 0, new_mean >= any_mean * (1 + margin),
                                 old_mean <= any_mean * (1 + margin)))
        keep[0] = True
        undo = ~keep[labels] & part
        if undo.any():
            sub = prob[box]
            sub[undo] = coarse[box][undo]
            undone += int((~keep[1:]).sum())
    return undone
