"""Tiled encoding: the encoder of one cascade scale over overlapping tiles (issue 32).

The encoders of `pipeline.models` (dilated ResNet-50, dilated MobileNetV2) and the fusion's 1x1
reductions are purely local: convolutions, max-pooling, BatchNorm in eval mode (a per-channel
affine map) and pointwise activations; neither has a global operation (no global pooling, no
image-level ASPP branch). An output cell therefore depends only on the input pixels within the
encoder's receptive radius (`receptive_radius`: 133 px for both). So the encoder can run on tiles:

- the scaled encoder input is split into owned squares of `tile` px (a multiple of the encoder's
  stride, 8), so every tile origin falls on the same output grid as the whole-image run;
- each tile is encoded with a halo of `halo` px (the radius rounded up to the stride) on every
  side that is not the image border, where the whole-image run's zero padding is reproduced;
- each tile writes only its owned cells into the stitched level maps (strides 2, 4, 8).

With the full halo every stitched cell sees exactly the inputs it sees in the whole-image run,
so the result equals it up to float rounding (different convolution blocking); the tests and
`samsr benchmark memory` measure the agreement. The encoder's working memory is then bounded by
one tile (its widest activations: 96 channels at stride 2 for MobileNetV2, 256 at stride 4 for
ResNet-50) instead of growing with the image; what still grows with the image is the stitched
reduced levels (16/16/32 channels for `crm_mnv2`, 64/64/128 for `crm_r50`) that fusion and
decoding stream from, as they do untiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.refine.geometry import lerp_table
from pipeline.refine.heartbeat import tick
from pipeline.refine.options import AUTO_PIXELS, AUTO_TILE

__all__ = [
    "AUTO_PIXELS",
    "AUTO_TILE",
    "LEVEL_STRIDES",
    "TileSpan",
    "axis_spans",
    "encode_tiled",
    "encoder_geometry",
    "receptive_radius",
    "resolve_tile",
    "scaled_region",
    "full_tensor",
]

_NOT_IN_LEVELS = ("layer4",)  # encoder children that do not feed x1, x2, x3
LEVEL_STRIDES = (2, 4, 8)  # strides of x1, x2, x3 (and of the fusion's reduced levels a1, a2, a3)


def _pair(value) -> int:
    return int(value[0] if isinstance(value, tuple) else value)


def receptive_radius(encoder: nn.Module) -> tuple[int, int]:
    """(radius, stride): how many input pixels on each side an encoder output depends on, and the
    encoder's total stride.

    Walks the spatial layers (Conv2d, MaxPool2d with a kernel > 1) in registration order, which is
    the forward order of every encoder in `pipeline.models`; each adds
    ``(kernel - 1) // 2 * dilation * stride_so_far`` and multiplies the stride by its own.
    1x1 convolutions add nothing and are skipped: this also skips the residual shortcuts
    (ResNet's `downsample`, a strided 1x1 parallel to the strided 3x3 it shortcuts), so residual
    branches are not counted twice. Modules named in `_NOT_IN_LEVELS` (ResNet's `layer4`, built for
    the checkpoint but not feeding x3) are skipped. The radius is an upper bound (the sum along the
    longest path): 133 px for both encoders of `pipeline.models`.
    """
    radius, stride = 0, 1
    for name, module in encoder.named_modules():
        if name.split(".")[0] in _NOT_IN_LEVELS:
            continue
        if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            continue
        kernel, step, dilation = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        if kernel == 1:
            continue
        radius += (kernel - 1) // 2 * dilation * stride
        stride *= step
    return radius, stride


def encoder_geometry(encoder: nn.Module) -> tuple[int, int]:
    """(halo, stride): the receptive radius rounded up to a multiple of the encoder's stride,
    and the stride (tile origins must be multiples of it)."""
    radius, stride = receptive_radius(encoder)
    if stride != LEVEL_STRIDES[-1]:
        raise ValueError(f"tiled encoding expects an encoder of output stride {LEVEL_STRIDES[-1]}, "
                         f"got {stride}")
    return -(-radius // stride) * stride, stride


def resolve_tile(setting, size: tuple[int, int], stride: int) -> int | None:
    """Owned tile side (px of the encoder input) for an encoder input of `size`, or None (untiled).

    setting: ``RefineOptions.tile_encoder``: "off", "auto" (AUTO_TILE above AUTO_PIXELS) or a side
    in px, rounded up to a multiple of `stride`; None as well when one tile would cover the input.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if size[0] * size[1] <= AUTO_PIXELS:
            return None
        setting = AUTO_TILE
    tile = -(-int(setting) // stride) * stride
    return None if tile >= max(size) else tile


@dataclass(frozen=True)
class TileSpan:
    """One tile along one axis: it owns input [own0, own1) and is encoded over [in0, in1)."""

    own0: int
    own1: int
    in0: int
    in1: int


def axis_spans(n: int, tile: int, halo: int) -> list[TileSpan]:
    """Tiles of an axis of `n` px: owned ranges of `tile` px (the last one shorter), each encoded
    with `halo` px more on each side, clipped to the axis (the border keeps its zero padding).
    `tile` and `halo` must be multiples of the encoder's stride."""
    if tile < 1 or halo < 0:
        raise ValueError(f"axis_spans: tile {tile} must be >= 1 and halo {halo} >= 0")
    return [TileSpan(o0, min(o0 + tile, n), max(0, o0 - halo), min(n, o0 + tile + halo))
            for o0 in range(0, n, tile)]


def _take(x, rows: Tensor, cols: Tensor) -> Tensor:
    """x[:, :, rows][:, :, :, cols] of a (1, C, H, W) tensor or a `PaddedImage`."""
    if isinstance(x, Tensor):
        return x[:, :, rows][:, :, :, cols]
    return x.take(rows, cols)


def full_tensor(x) -> Tensor:
    """A (1, C, H, W) tensor itself, or a `PaddedImage` materialised."""
    return x if isinstance(x, Tensor) else x.full()


def scaled_region(base, mask_in: Tensor, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
                  ) -> Tensor:
    """Rows/cols [r0, r1) x [c0, c1) of the encoder input: ``cat(RGB, mask, rest)`` of the padded
    base (1, C-1, Hp, Wp) (a tensor or a `pipeline.refine.inputs.PaddedImage`) and mask
    (1, 1, Hp, Wp), resized to `size` (bilinear, align_corners=True; the same products as
    `pipeline.refine.tiles` upsampling: rows first, then columns); a plain region when `size` is
    the padded size."""
    (r0, r1), (c0, c1) = rows, cols
    device = mask_in.device
    h_in, w_in = mask_in.shape[-2:]
    if tuple(size) == (h_in, w_in):
        ri, ci = torch.arange(r0, r1, device=device), torch.arange(c0, c1, device=device)
        rgb_rest, mask = _take(base, ri, ci), mask_in[:, :, r0:r1, c0:c1]
        return torch.cat([rgb_rest[:, :3], mask, rgb_rest[:, 3:]], dim=1)
    i0, i1, ly = lerp_table(size[0], h_in, r0, r1, device)
    j0, j1, lx = lerp_table(size[1], w_in, c0, c1, device)
    ly, lx = ly.view(1, 1, -1, 1), lx.view(1, 1, 1, -1)
    out = []
    for x in (base, mask_in):
        left = _take(x, i0, j0)
        left += (_take(x, i1, j0) - left) * ly
        right = _take(x, i0, j1)
        right += (_take(x, i1, j1) - right) * ly
        out.append(left + (right - left) * lx)
    return torch.cat([out[0][:, :3], out[1], out[0][:, 3:]], dim=1)


def encode_tiled(
    encode: Callable[[Callable[[], Tensor]], tuple[Tensor, ...]],
    region: Callable[[tuple[int, int], tuple[int, int]], Tensor],
    size: tuple[int, int],
    tile: int,
    halo: int,
) -> tuple[Tensor, ...]:
    """Level maps of `encode` over an encoder input of `size` (H, W), computed tile by tile.

    region((r0, r1), (c0, c1)) -> (1, C, r1-r0, c1-c0): that part of the encoder input;
    encode(make) -> level maps at strides LEVEL_STRIDES (sizes rounded up) of the tile input that
    ``make()`` returns (a thunk, so that `encode` can free the input early).
    Returns the stitched maps, each (1, C_i, ceil(H/s_i), ceil(W/s_i)), as `encode` would give
    for the whole input (up to float rounding when `halo` covers the receptive radius).
    """
    height, width = size
    out: list[Tensor] | None = None
    for rs in axis_spans(height, tile, halo):
        for cs in axis_spans(width, tile, halo):
            levels = encode(lambda rs=rs, cs=cs: region((rs.in0, rs.in1), (cs.in0, cs.in1)))
            tick()
            if out is None:
                out = [
                    lv.new_empty((1, lv.shape[1], -(-height // s), -(-width // s)))
                    for lv, s in zip(levels, LEVEL_STRIDES)
                ]
            for dst, lv, s in zip(out, levels, LEVEL_STRIDES):
                a0, a1 = rs.own0 // s, -(-rs.own1 // s)
                b0, b1 = cs.own0 // s, -(-cs.own1 // s)
                ta, tb = (rs.own0 - rs.in0) // s, (cs.own0 - cs.in0) // s
                dst[:, :, a0:a1, b0:b1] = lv[:, :, ta : ta + a1 - a0, tb : tb + b1 - b0]
            del levels
    assert out is not None
    return tuple(out)
