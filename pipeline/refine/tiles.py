"""Tile-wise fusion and decoding of one cascade scale (the exact optimisations).

A scale's feature map F (stride 2 of the encoder input) is split into tiles of
`tile` x `tile` cells. Each query pixel is owned by the tile holding its lower ensemble
neighbour (offset -1) along both axes; its other neighbours are at most one cell further,
so a tile needs its cells plus one extra row/column. Fusion of a tile (upsample + concat +
`last_conv`) needs one more cell of halo for the 3x3 conv; zero padding is applied only at
the true map border, so tiles reproduce the whole-map result.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.crm import CRMNet, linear_fp32
from pipeline.refine.geometry import AxisTable, axis_table, lerp_table
from pipeline.refine.heartbeat import tick

__all__ = ["StreamFeatures", "FullFeatures", "TileDecoder", "fuse_patched", "owned_bounds", "tile_cells"]


def _upsample_region(
    a: Tensor, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> Tensor:
    """Rows/cols [r0, r1) x [c0, c1) of F.interpolate(a, size, bilinear, align_corners=True)."""
    h_in, w_in = a.shape[-2:]
    i0, i1, ly = lerp_table(size[0], h_in, rows[0], rows[1], a.device)
    j0, j1, lx = lerp_table(size[1], w_in, cols[0], cols[1], a.device)
    top, bottom = a[:, :, i0], a[:, :, i1]
    ly = ly.view(1, 1, -1, 1)
    region = top + (bottom - top) * ly
    left, right = region[..., j0], region[..., j1]
    return left + (right - left) * lx.view(1, 1, 1, -1)


class StreamFeatures:
    """Computes feature tiles of F on demand from the reduced levels a1, a2, a3."""

    def __init__(self, model: CRMNet, a1: Tensor, a2: Tensor, a3: Tensor) -> None:
        self.a1, self.a2, self.a3 = a1, a2, a3
        self.conv: nn.Conv2d = model.aspp_.last_conv[0]
        self.norm: nn.Module = model.aspp_.last_conv[1]
        self.shape = tuple(a1.shape[-2:])

    def tile(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """F[:, :, r0:r1, c0:c1] as (1, C, r1-r0, c1-c0)."""
        h, w = self.shape
        e0, e1, f0, f1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
        parts = [
            self.a1[:, :, e0:e1, f0:f1],
            _upsample_region(self.a2, (h, w), (e0, e1), (f0, f1)),
            _upsample_region(self.a3, (h, w), (e0, e1), (f0, f1)),
        ]
        x = torch.cat(parts, dim=1)
        pad = (int(c0 == 0), int(c1 == w), int(r0 == 0), int(r1 == h))
        if any(pad):
            x = F.pad(x, pad)
        y = F.conv2d(x, self.conv.weight, self.conv.bias, stride=1, padding=0)
        return torch.relu_(self.norm(y))


class FullFeatures:
    """Tiles sliced from a materialised feature map F (1, C, h, w)."""

    def __init__(self, feat: Tensor) -> None:
        self.feat = feat
        self.shape = tuple(feat.shape[-2:])

    def tile(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        return self.feat[:, :, r0:r1, c0:c1]


def tile_cells(tile: int, n_feat: int, n_query: int) -> int:
    """Feature cells per tile side so that a tile spans about `tile` query pixels."""
    return max(4, (tile * n_feat) // max(n_query, 1))


def fuse_patched(source: StreamFeatures, tile_rows: int, tile_cols: int) -> Tensor:
    """Whole feature map F (1, C, h, w) assembled from fusion tiles (patched fusion)."""
    h, w = source.shape
    out = source.a1.new_empty((1, source.conv.out_channels, h, w))
    for r0 in range(0, h, tile_rows):
        for c0 in range(0, w, tile_cols):
            r1, c1 = min(r0 + tile_rows, h), min(c0 + tile_cols, w)
            out[:, :, r0:r1, c0:c1] = source.tile(r0, r1, c0, c1)
    return out


def owned_bounds(table: AxisTable, step: int) -> list[int]:
    """Query bounds of the tiles of `step` cells along one axis: tile k (cells [k*step,
    (k+1)*step)) owns the queries [bounds[k], bounds[k+1]) whose offset -1 neighbour lies in
    its cells. Read back to the host once per axis, so the tile loop never waits on the device."""
    low = table.index[0]
    edges = torch.arange(0, -(-table.n_feat // step) + 1, device=low.device) * step
    return torch.searchsorted(low, edges).tolist()


class TileDecoder:
    """Decodes query pixels of an (n_rows, n_cols) grid tile by tile from a feature source.

    With `factorized`, the first decoder layer is split: G = W_feat @ F per feature cell
    (32 channels) plus per-axis coordinate terms per query. `prior`: (weight, mask (n_rows, n_cols)),
    the logit offsets ``weight * mask`` added before the sigmoid (a mask-prior model's
    ``mask_prior * mask``), computed per tile (no full-size copy); or None.
    """

    def __init__(
        self, model: CRMNet, source, n_rows: int, n_cols: int, tile: int, factorized: bool, cache: bool,
        prior: tuple[float, Tensor] | None = None,
    ) -> None:
        self.source, self.factorized, self.prior = source, factorized, prior
        h, w = source.shape
        self.tile_rows, self.tile_cols = tile_cells(tile, h, n_rows), tile_cells(tile, w, n_cols)
        device = model.imnet.layers[0].weight.device
        self.rows = axis_table(n_rows, h, device)
        self.cols = axis_table(n_cols, w, device)
        linears = [m for m in model.imnet.layers if isinstance(m, nn.Linear)]
        self.first, self.rest = linears[0], linears[1:]
        self.feat_dim = model.feat_dim
        self.cache: dict[tuple[int, int], Tensor] | None = {} if cache else None
        if factorized:
            weight, bias = self.first.weight, self.first.bias
            c = self.feat_dim
            self.w_feat = weight[:, :c].t().contiguous()  # (C, hidden)
            w_rel, w_q, w_cell = weight[:, c : c + 2], weight[:, c + 2 : c + 4], weight[:, c + 4 : c + 6]
            r, k = self.rows, self.cols
            # (2, n, hidden) per-axis coordinate terms; the bias goes with the rows.
            self.row_terms = (
                r.rel[..., None] * w_rel[:, 0]
                + r.coord[None, :, None] * w_q[:, 0]
                + r.cell * w_cell[:, 0]
                + bias
            )
            self.col_terms = (
                k.rel[..., None] * w_rel[:, 1] + k.coord[None, :, None] * w_q[:, 1] + k.cell * w_cell[:, 1]
            )

    @functools.cached_property
    def row_bounds(self) -> list[int]:
        """Query rows owned by each row of tiles (`owned_bounds`; read back on first use)."""
        return owned_bounds(self.rows, self.tile_rows)

    @functools.cached_property
    def col_bounds(self) -> list[int]:
        return owned_bounds(self.cols, self.tile_cols)

    def _features(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        key = (r0, c0)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        feat = self.source.tile(r0, r1, c0, c1)[0].permute(1, 2, 0)  # (h, w, C)
        # factorised: float32, so the coordinate terms are added at full precision under autocast
        feat = (feat @ self.w_feat).float() if self.factorized else feat.contiguous()
        if self.cache is not None:
            self.cache[key] = feat
        return feat

    def decode(self, out: Tensor, mask: Tensor | None = None) -> None:
        """Write probabilities of the selected queries into `out` (n_rows, n_cols) float32.

        `mask` (n_rows, n_cols) bool selects queries; None decodes all of them. The tile
        geometry is known on the host, so the loop over tiles does not wait on the device:
        a mask costs two reads back per call (its points, and their count per tile).
        """
        h, w = self.source.shape
        tr, tc = self.tile_rows, self.tile_cols
        points = None if mask is None else self._points_by_tile(mask)
        for i, r0 in enumerate(range(0, h, tr)):
            ya, yb = self.row_bounds[i], self.row_bounds[i + 1]
            if ya == yb:
                continue
            tick()
            for j, c0 in enumerate(range(0, w, tc)):
                xa, xb = self.col_bounds[j], self.col_bounds[j + 1]
                if xa == xb:
                    continue
                feat_rows, feat_cols = (r0, min(r0 + tr + 1, h)), (c0, min(c0 + tc + 1, w))
                if points is None:
                    feat = self._features(*feat_rows, *feat_cols)
                    out[ya:yb, xa:xb] = self._decode_grid(feat, r0, c0, (ya, yb), (xa, xb))
                    continue
                iy, ix = points(i, j)
                if iy is None:
                    continue
                feat = self._features(*feat_rows, *feat_cols)
                out[iy, ix] = self._decode_points(feat, r0, c0, iy, ix)

    def _points_by_tile(self, mask: Tensor):
        """A function (row tile i, column tile j) -> (iy, ix) int64 global indices of the
        selected queries that tile owns, in row-major order, or (None, None) when it owns none."""
        iy, ix = mask.nonzero().unbind(1)  # row-major
        n_col_tiles = len(self.col_bounds) - 1
        row_tile = self.rows.index[0][iy] // self.tile_rows
        tile = row_tile * n_col_tiles + self.cols.index[0][ix] // self.tile_cols
        tile, order = torch.sort(tile, stable=True)  # by tile; row-major within a tile
        iy, ix = iy[order], ix[order]
        counts = torch.bincount(tile, minlength=(len(self.row_bounds) - 1) * n_col_tiles).tolist()
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)

        def points(i: int, j: int):
            k = i * n_col_tiles + j
            a, b = starts[k], starts[k + 1]
            return (None, None) if a == b else (iy[a:b], ix[a:b])

        return points

    def _mlp_tail(self, hidden: Tensor) -> Tensor:
        """(4, ...) first-layer pre-activations -> (4, ...) logits of the 4 ensemble members."""
        x = torch.relu_(hidden.reshape(-1, hidden.shape[-1]))
        for layer in self.rest[:-1]:
            x = torch.relu_(layer(x))
        return self.rest[-1](x).view(hidden.shape[:-1])

    @staticmethod
    def _blend(preds: Tensor, areas: Tensor, prior: Tensor | None) -> Tensor:
        """LIIF local ensemble: member k weighted by the area of member 3 - k; + prior; sigmoid."""
        logits = (preds * areas.flip(0)).sum(dim=0) / areas.sum(dim=0)
        return torch.sigmoid(logits if prior is None else logits + prior)

    def _decode_grid(
        self, feat: Tensor, r0: int, c0: int, ys: tuple[int, int], xs: tuple[int, int]
    ) -> Tensor:
        """Probabilities of the dense query block rows ys x cols xs: (ny, nx)."""
        ry = self.rows.index[:, ys[0] : ys[1]] - r0
        cx = self.cols.index[:, xs[0] : xs[1]] - c0
        rel_y, rel_x = self.rows.rel[:, ys[0] : ys[1]], self.cols.rel[:, xs[0] : xs[1]]
        ny, nx = ry.shape[1], cx.shape[1]
        members = []
        for vy in range(2):
            rows = feat.index_select(0, ry[vy])  # (ny, w, C)
            for vx in range(2):
                cells = rows.index_select(1, cx[vx])  # (ny, nx, C)
                if self.factorized:
                    cells += self.row_terms[vy, ys[0] : ys[1], None, :]
                    cells += self.col_terms[vx, None, xs[0] : xs[1], :]
                    members.append(cells)
                else:
                    coords = torch.stack(
                        [
                            rel_y[vy, :, None].expand(ny, nx),
                            rel_x[vx, None, :].expand(ny, nx),
                            self.rows.coord[ys[0] : ys[1], None].expand(ny, nx),
                            self.cols.coord[None, xs[0] : xs[1]].expand(ny, nx),
                            self.rows.cell.expand(ny, nx),
                            self.cols.cell.expand(ny, nx),
                        ],
                        dim=-1,
                    )
                    members.append(linear_fp32(self.first, torch.cat([cells, coords], dim=-1)))
        preds = self._mlp_tail(torch.stack(members))
        areas = torch.stack(
            [torch.abs(rel_y[vy, :, None] * rel_x[vx, None, :]) + 1e-9 for vy in range(2) for vx in range(2)]
        )
        prior = None if self.prior is None else self.prior[0] * self.prior[1][ys[0] : ys[1], xs[0] : xs[1]]
        return self._blend(preds, areas, prior)

    def _decode_points(self, feat: Tensor, r0: int, c0: int, iy: Tensor, ix: Tensor) -> Tensor:
        """Probabilities of the queries (iy, ix) (global pixel indices): (n,)."""
        ry = self.rows.index[:, iy] - r0  # (2, n)
        cx = self.cols.index[:, ix] - c0
        rel_y, rel_x = self.rows.rel[:, iy], self.cols.rel[:, ix]
        flat = feat.reshape(-1, feat.shape[-1])
        width = feat.shape[1]
        members = []
        for vy in range(2):
            for vx in range(2):
                cells = flat.index_select(0, ry[vy] * width + cx[vx])
                if self.factorized:
                    members.append(cells + self.row_terms[vy, iy] + self.col_terms[vx, ix])
                else:
                    n = iy.shape[0]
                    coords = torch.stack(
                        [
                            rel_y[vy],
                            rel_x[vx],
                            self.rows.coord[iy],
                            self.cols.coord[ix],
                            self.rows.cell.expand(n),
                            self.cols.cell.expand(n),
                        ],
                        dim=1,
                    )
                    members.append(linear_fp32(self.first, torch.cat([cells, coords], dim=1)))
        preds = self._mlp_tail(torch.stack(members))
        areas = torch.stack([torch.abs(rel_y[vy] * rel_x[vx]) + 1e-9 for vy in range(2) for vx in range(2)])
        prior = None if self.prior is None else self.prior[0] * self.prior[1][iy, ix]
        return self._blend(preds, areas, prior)
