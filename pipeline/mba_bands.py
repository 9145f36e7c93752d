"""Exact, fast counting of CascadePSP's mBA bands (used by :func:`pipeline.metrics.mba`).

For each radius r the band is the morphological gradient of the ground truth with cv2's
elliptical (2r+1) kernel. Only horizontal strips near the ground truth's class changes can hold
band pixels, so the counts are taken there, with enough margin to equal whole-image counts.
Each row of the elliptical kernel is a centred segment: one distance-to-class-change map per row
plus a lookup table per vertical offset gives all radii in one pass. Radii above
``_MAX_LUT_RADIUS`` fall back to cv2's gradient per radius.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["mba_band_counts"]


def _u8(mask: np.ndarray) -> np.ndarray:
    """Zero-copy (H, W) uint8 {0, 1} view of a bool mask (OpenCV does not take bool arrays)."""
    return np.ascontiguousarray(mask).view(np.uint8)


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], active.view(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _half_widths(radius: int) -> list[int]:
    """Half-width of rows |dy| = 0..radius of OpenCV's (2r+1) elliptical kernel (rows are centred runs)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    widths = []
    for row in kernel[radius:]:
        on = np.flatnonzero(row)
        half = (len(on) - 1) // 2
        if len(on) % 2 == 0 or not np.array_equal(on, np.arange(radius - half, radius + half + 1)):
            raise ValueError(f"elliptical kernel of radius {radius} has a row that is not a centred run")
        widths.append(half)
    return widths


_MAX_LUT_RADIUS = 120  # distances up to radius + 1 plus a doubling step must fit in uint8 (< 128)


def _band_luts(radii: Sequence[int]) -> list[np.ndarray]:
    """One uint16 table per vertical offset t = 0..max(radii), indexed by a pixel code q.

    q = e for a background pixel, 128 + e for a foreground pixel, where e in 1..R+1 is the horizontal
    distance to the nearest pixel of the other class in the same row (R+1: none within R). Bit i of
    the entry says a pixel t rows away sees the foreground within the kernel row of radius i (the
    dilation of gt), bit 8 + i the same for the background (the dilation of not-gt).
    """
    big = max(radii)
    widths = [_half_widths(r) for r in radii]
    e = np.arange(256) & 127
    fg = np.arange(256) >= 128
    luts = []
    for t in range(big + 1):
        lut = np.zeros(256, np.uint16)
        for i, r in enumerate(radii):
            if t > r:
                continue
            near = e <= widths[i][t]
            lut |= np.where(fg | near, 1 << i, 0).astype(np.uint16)  # dilation of gt reaches
            lut |= np.where(~fg | near, 1 << (8 + i), 0).astype(np.uint16)  # dilation of not-gt reaches
        luts.append(lut)
    return luts


def _row_distance(g: np.ndarray, cap: int) -> np.ndarray:
    """Per pixel, horizontal distance to the nearest pixel of the other class in its row, capped at cap.

    g: (h, w) uint8 {0, 1}. Returns (h, w) uint8 in 1..cap. The nearest other-class pixel lies just past
    the nearest pixel that has a horizontal neighbour of the other class (a seed), so the distance is
    1 + the distance to the nearest seed, computed by doubling: after steps 1, 2, 4, ... every offset
    below twice the last step has been reached at its exact cost.
    """
    seed = np.zeros(g.shape, bool)
    diff = g[:, 1:] != g[:, :-1]
    seed[:, 1:] |= diff
    seed[:, :-1] |= diff
    dist = np.where(seed, np.uint8(1), np.uint8(cap))
    step = 1
    while step < cap:
        nxt = dist.copy()
        np.minimum(nxt[:, step:], dist[:, :-step] + np.uint8(step), out=nxt[:, step:])
        np.minimum(nxt[:, :-step], dist[:, step:] + np.uint8(step), out=nxt[:, :-step])
        dist, step = nxt, 2 * step
    return np.minimum(dist, np.uint8(cap), out=dist)


def _crop_band_hist(
    crop: np.ndarray, err: np.ndarray, cy: slice, cx: slice, luts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms over the centre (cy, cx) of a crop of the per-pixel radius bit sets.

    crop: (h, w) uint8 {0, 1} ground truth with a margin of max radius around the centre (or the image
    border); err: centre-sized uint8 {0, 1}, 1 where prediction != ground truth. Returns two (256,)
    histograms of the centre's band bits (bit i: in the band of radius i), for all pixels and for
    wrong pixels.
    """
    big = len(luts) - 1
    code = _row_distance(crop, big + 1)[:, cx]
    code |= crop[:, cx] << 7
    n = code.shape[0]
    y0, y1 = cy.start, cy.stop
    acc = cv2.LUT(code[y0:y1], luts[0])
    for t in range(1, big + 1):
        lo, hi = max(y0 - t, 0), min(y1 + t, n)
        seen = cv2.LUT(code[lo:hi], luts[t])  # rows lo..hi-1; centre row y reads rows y - t and y + t
        a, b = max(y0, lo + t), min(y1, hi + t)  # centre rows whose row y - t exists
        if b > a:
            np.bitwise_or(acc[a - y0 : b - y0], seen[a - t - lo : b - t - lo], out=acc[a - y0 : b - y0])
        a, b = max(y0, lo - t), min(y1, hi - t)  # centre rows whose row y + t exists
        if b > a:
            np.bitwise_or(acc[a - y0 : b - y0], seen[a + t - lo : b + t - lo], out=acc[a - y0 : b - y0])
    # a background pixel is in the band where the dilation of gt reaches it, a foreground pixel where
    # the dilation of not-gt does
    centre = crop[cy, cx]
    bits = np.where(centre.astype(bool), acc >> 8, acc & 0xFF).astype(np.uint8)
    if bits.size >= 1 << 24:  # calcHist counts in float32: exact below 2**24
        return np.bincount(bits.ravel(), minlength=256), np.bincount(bits[err.view(bool)], minlength=256)
    hist_all = cv2.calcHist([bits], [0], None, [256], [0, 256]).ravel()
    hist_err = cv2.calcHist([bits], [0], err, [256], [0, 256]).ravel()
    return hist_all.astype(np.int64), hist_err.astype(np.int64)


def _mba_band_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    radii: Sequence[int],
    strip_height: int | None = None,
    max_lut_radius: int = _MAX_LUT_RADIUS,
) -> tuple[list[int], list[int]]:
    """Per radius: (pixels in gt's band, band pixels where pred == gt), for (H, W) bool masks.

    Exactly the whole-image counts. A band pixel lies within Chebyshev distance r of a pixel whose
    4-neighbour has the other class, so only column runs near such pixels are processed, in horizontal
    strips, each with a margin of max(radii) so every kernel window is complete (at the image border
    the crop border is the image border: nothing outside counts, as in OpenCV's default morphology
    borders). Within a crop, the bands of all radii come from one pass over the rows of the kernels
    (``_crop_band_hist``); radii beyond ``max_lut_radius`` (<= ``_MAX_LUT_RADIUS``) use OpenCV's
    morphological gradient per radius instead (same counts, slower).
    """
    h, w = gt.shape
    g8, p8 = _u8(gt), _u8(pred)
    uniq = sorted(set(radii))
    big = uniq[-1]
    use_lut = big <= min(max_lut_radius, _MAX_LUT_RADIUS)
    luts = _band_luts(uniq) if use_lut else []
    kernels = [cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) for r in uniq]
    hist_all = np.zeros(256, np.int64)
    hist_err = np.zeros(256, np.int64)
    band_cv = [0] * len(uniq)
    wrong_cv = [0] * len(uniq)
    step = strip_height or max(64, 6 * big)
    idx = np.arange(w)
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        ya, yb = max(0, y0 - big), min(h, y1 + big)
        block = g8[ya:yb]
        lo, hi = block.min(axis=0), block.max(axis=0)
        active = lo != hi  # columns with a vertical transition inside the block
        diff = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])  # horizontal transitions between columns
        active[1:] |= diff
        active[:-1] |= diff
        if not active.any():
            continue
        # grow by `big` columns on each side: running count over a window of 2*big+1
        csum = np.concatenate(([0], np.cumsum(active, dtype=np.int64)))
        active = csum[np.minimum(idx + big + 1, w)] - csum[np.maximum(idx - big, 0)] > 0
        for x0, x1 in _runs(active):
            xa, xb = max(0, x0 - big), min(w, x1 + big)
            crop = np.ascontiguousarray(g8[ya:yb, xa:xb])
            cy, cx = slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa)
            err = (crop[cy, cx] != p8[y0:y1, x0:x1]).view(np.uint8)
            if use_lut:
                a, e = _crop_band_hist(crop, err, cy, cx, luts)
                hist_all += a
                hist_err += e
                continue
            for i, kernel in enumerate(kernels):
                grad = cv2.morphologyEx(crop, cv2.MORPH_GRADIENT, kernel)[cy, cx]
                band_cv[i] += cv2.countNonZero(grad)
                wrong_cv[i] += cv2.countNonZero(cv2.bitwise_and(grad, err))
    if use_lut:
        has = [(np.arange(256) >> i) & 1 == 1 for i in range(len(uniq))]
        band_cv = [int(hist_all[m].sum()) for m in has]
        wrong_cv = [int(hist_err[m].sum()) for m in has]
    by_r = {r: (b, b - e) for r, b, e in zip(uniq, band_cv, wrong_cv)}
    return [by_r[r][0] for r in radii], [by_r[r][1] for r in radii]


mba_band_counts = _mba_band_counts
