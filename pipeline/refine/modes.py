"""Decoding modes other than "full": strided decoding and regions of interest (DESIGN §2.4)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["strided_decode", "roi_mask", "default_margin"]

_CHUNK_ROWS = 256  # rows blended at a time by strided decoding


def _grid_lines(n: int, stride: int, device) -> Tensor:
    """0, stride, 2*stride, ... and n - 1, built on the device from host integers (no sync)."""
    last = (n - 1) // stride * stride
    lines = torch.arange(0, last + 1, stride, device=device)
    if last != n - 1:
        lines = torch.cat([lines, torch.full((1,), n - 1, dtype=lines.dtype, device=device)])
    return lines


def _brackets(n: int, lines: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For every position 0..n-1: lower/upper decoded line and the blend weight (0 on a line)."""
    pos = torch.arange(n, device=lines.device)
    upper_i = torch.searchsorted(lines, pos)  # first line >= pos
    upper = lines[upper_i]
    lower = torch.where(upper == pos, upper, lines[(upper_i - 1).clamp(min=0)])
    span = (upper - lower).clamp(min=1).float()
    return lower, upper, (pos - lower).float() / span


def strided_decode(
    decode: Callable[[Tensor, Tensor | None], None], shape: tuple[int, int], stride: int, device
) -> Tensor:
    """Decode every `stride`-th pixel (plus the last row/column); a pixel in between takes the
    bilinear blend of its 4 decoded neighbours when they agree (binary at 0.5), otherwise it
    is decoded. `decode(out, mask)` writes probabilities of the masked pixels into `out`.
    Returns (H, W) float32 probabilities."""
    h, w = shape
    rows, cols = _grid_lines(h, stride, device), _grid_lines(w, stride, device)
    on_grid = torch.zeros((h, w), dtype=torch.bool, device=device)
    on_grid[rows[:, None], cols[None, :]] = True
    out = torch.zeros((h, w), dtype=torch.float32, device=device)
    decode(out, on_grid)
    y0, y1, wy = _brackets(h, rows)
    x0, x1, wx = _brackets(w, cols)
    # Every blended value comes from the grid rows blended along the columns first (`across`: the
    # `top` / `bottom` of the rows between two grid rows, computed once per grid row), then along
    # the rows in chunks (whole-image temporaries would take ~50 B/px). The blend reads only grid
    # points, which it never writes, so `out` is filled in place.
    grid = out[rows]  # (grid rows, W): the decoded grid points (and zeros between them)
    g0, g1 = grid[:, x0], grid[:, x1]
    across = g0 + (g1 - g0) * wx
    up0, up1 = g0 > 0.5, g1 > 0.5
    high, low = up0 & up1, ~up0 & ~up1  # both neighbours on one side of 0.5
    del grid, g0, g1, up0, up1
    i0, i1 = torch.searchsorted(rows, y0), torch.searchsorted(rows, y1)  # y0, y1 as grid row numbers
    disagree = torch.empty((h, w), dtype=torch.bool, device=device)
    for r0 in range(0, h, _CHUNK_ROWS):
        r1 = min(h, r0 + _CHUNK_ROWS)
        a, b = i0[r0:r1], i1[r0:r1]
        top, bottom = across[a], across[b]
        blend = top + (bottom - top) * wy[r0:r1, None]
        agree = (high[a] & high[b]) | (low[a] & low[b])  # all 4 corners on one side of 0.5
        fill = ~on_grid[r0:r1]
        # not out[fill] = ...: a boolean index waits on the device
        out[r0:r1] = torch.where(fill, blend, out[r0:r1])
        disagree[r0:r1] = fill & ~agree
    del on_grid
    if bool(disagree.any()):
        decode(out, disagree)
    return out


def default_margin(h: int, w: int) -> int:
    """ROI margin in pixels when none is given: max(16, 3% of the long side)."""
    return max(16, round(0.03 * max(h, w)))


def roi_mask(mask: Tensor, mode: str, margin: int | None) -> Tensor:
    """(H, W) bool region to decode for `mode` "bbox" or "contour" from the (H, W) coarse
    mask in [0, 1] (binarised at 0.5)."""
    h, w = mask.shape
    margin = default_margin(h, w) if margin is None else margin
    binary = (mask > 0.5).cpu().numpy().astype(np.uint8)
    region = np.zeros((h, w), dtype=bool)
    if mode == "bbox":
        ys, xs = np.nonzero(binary)
        if ys.size:
            region[
                max(0, ys.min() - margin) : min(h, ys.max() + margin + 1),
                max(0, xs.min() - margin) : min(w, xs.max() + margin + 1),
            ] = True
    elif mode == "contour":
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        region = cv2.morphologyEx(binary, cv2.MORPH_GRADIENT, kernel) > 0
    else:
        raise ValueError(f"roi_mask: unknown mode {mode!r}")
    return torch.from_numpy(region).to(mask.device)
