"""Separable query geometry of the LIIF local ensemble on a full pixel grid.

For a query grid of n_q pixels along an axis and a feature map of n_f cells, the official
decoder shifts each query coordinate by ±1/n_f (+1e-6, clamped) and takes the nearest
feature cell. Along each axis this depends on that axis alone, so it is tabulated once per
axis; the nearest index is obtained with the same `grid_sample` call the official code
uses, so ties round identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.crm import ENSEMBLE_EPS, make_coord

__all__ = ["AxisTable", "axis_table", "lerp_table"]


@dataclass(frozen=True)
class AxisTable:
    """Per-axis tables for queries 0..n_query-1 against n_feat feature cells.

    coord: (n_query,) float32 query centre coordinates in [-1, 1];
    index: (2, n_query) int64 nearest feature cell for offsets -1 and +1 (non-decreasing);
    rel:   (2, n_query) float32 (coord - cell centre) * n_feat;
    cell:  float32 scalar tensor, query cell size * n_feat (2 / n_query * n_feat).
    """

    coord: Tensor
    index: Tensor
    rel: Tensor
    cell: Tensor
    n_feat: int


def axis_table(n_query: int, n_feat: int, device: torch.device | str) -> AxisTable:
    coord = make_coord((n_query,), device=device)[:, 0]
    centres = make_coord((n_feat,), device=device)[:, 0]
    index_map = torch.arange(n_feat, device=device, dtype=torch.float32).view(1, 1, n_feat, 1)
    indices, rels = [], []
    for v in (-1, 1):
        shifted = (coord + (v * (1.0 / n_feat) + ENSEMBLE_EPS)).clamp(-1 + ENSEMBLE_EPS, 1 - ENSEMBLE_EPS)
        grid = torch.stack([torch.zeros_like(shifted), shifted], dim=-1).view(1, 1, n_query, 2)
        nearest = F.grid_sample(index_map, grid, mode="nearest", align_corners=False).view(-1)
        index = nearest.round().long()
        indices.append(index)
        rels.append((coord - centres[index]) * n_feat)
    cell = torch.full((), 2 / n_query, dtype=torch.float32, device=device) * n_feat
    return AxisTable(coord, torch.stack(indices), torch.stack(rels), cell, n_feat)


def lerp_table(n_out: int, n_in: int, start: int, stop: int, device: torch.device | str):
    """Bilinear (align_corners=True) source indices/weights for outputs start..stop-1 of a
    resize n_in -> n_out along one axis: (i0, i1) int64 and lam float32, each (stop-start,).
    Uses torch's float32 scale (n_in-1)/(n_out-1) (a float32 division, as `F.interpolate`
    computes it) and source index scale * i. The scale is computed on the host and passed as a
    scalar: nothing is copied to the device (no host-device sync per tile)."""
    scale = float(np.float32(n_in - 1) / np.float32(n_out - 1)) if n_out > 1 else 0.0
    src = torch.arange(start, stop, device=device, dtype=torch.float32) * scale
    i0 = src.floor().long().clamp_(0, n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    lam = src - i0.float()
    return i0, i1, lam
