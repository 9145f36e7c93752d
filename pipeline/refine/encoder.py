"""Encoder step of one cascade scale, optionally run in row strips to lower its memory peak.

The encoder's peak sits at stride 4 (x1 next to `layer1`'s 256 channels) and in `layer2`'s
first block. Both `maxpool + layer1` and `layer2` halve the resolution with a 3x3/2 window
(padding 1) followed by a few 3x3 convs, so each output row depends on a handful of input
rows: run over row strips with a halo and keep the interior rows, they give exactly the
whole-map result while holding one strip's temporaries. The levels are reduced by the
fusion's 1x1 branches as soon as they are no longer needed (x1 in place).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.crm import Fusion
from pipeline.models.resnet import DilatedResNet
from pipeline.refine.options import RefineOptions
from pipeline.refine.tiled import encode_tiled, encoder_geometry, full_tensor, resolve_tile, scaled_region

__all__ = ["encode_levels", "encode_reduced", "halving_in_strips", "layer1_in_strips"]

_HALO = 4  # output rows: 1 for the 3x3/2 window, 1 per following 3x3 conv (3 blocks)
_STRIP = 128  # output rows per strip


def halving_in_strips(
    fn: Callable[[Tensor], Tensor], x: Tensor, strip: int = _STRIP, halo: int = _HALO
) -> Tensor:
    """fn(x) by row strips, for an `fn` that maps H rows to ceil(H/2) with a 3x3/2 window
    (padding 1) followed by at most `halo` - 1 row-local 3x3 convs (maxpool + layer1, layer2)."""
    h_in = x.shape[-2]
    h_out = (h_in + 1) // 2
    if h_out <= strip + 2 * halo:
        return fn(x)
    out = None
    for o0 in range(0, h_out, strip):
        o1 = min(o0 + strip, h_out)
        start, stop = max(0, o0 - halo), min(h_out, o1 + halo)  # output rows; input from 2*start
        part = fn(x[:, :, 2 * start : min(h_in, 2 * stop)])
        if out is None:
            out = part.new_empty((*part.shape[:2], h_out, part.shape[-1]))
        out[:, :, o0:o1] = part[:, :, o0 - start : o1 - start]
    return out


def layer1_in_strips(encoder: DilatedResNet, x1: Tensor, strip: int = _STRIP) -> Tensor:
    """`encoder.layer1(encoder.maxpool(x1))` computed by row strips (exact)."""
    return halving_in_strips(lambda t: encoder.layer1(encoder.maxpool(t)), x1, strip)


def _scaled_input(base, mask_in: Tensor, size: tuple[int, int]) -> Tensor:
    base = full_tensor(base)
    inp = torch.cat([base[:, :3], mask_in, base[:, 3:]], dim=1)
    del base
    return F.interpolate(inp, size=size, mode="bilinear", align_corners=True)


def _levels_of(model, make: Callable[[], Tensor], options: RefineOptions) -> tuple[Tensor, Tensor, Tensor]:
    """x1, x2, x3 of `model.feats` for the encoder input (1, C, h, w) that `make()` returns (a
    thunk, so that with `layer1_strips` the input is freed after the stem)."""
    encoder = model.feats
    if not (options.layer1_strips and isinstance(encoder, DilatedResNet)):
        return encoder(make(), run_layer4=not options.skip_layer4)
    inp = make()
    x1 = encoder.stem(inp)
    del inp
    x2 = layer1_in_strips(encoder, x1)
    x3 = encoder.layer3(halving_in_strips(encoder.layer2, x2))
    if not options.skip_layer4:
        encoder.layer4(x3)
    return x1, x2, x3


def _encode(model, base, mask_in: Tensor, size: tuple[int, int], options: RefineOptions,
            levels_of: Callable[[Callable[[], Tensor]], tuple[Tensor, Tensor, Tensor]]
            ) -> tuple[Tensor, Tensor, Tensor]:
    """`levels_of` the encoder input at `size`, over tiles when `options.tile_encoder` asks for it."""
    halo, stride = encoder_geometry(model.feats)
    tile = resolve_tile(options.tile_encoder, size, stride)
    if tile is None:
        source = tuple(mask_in.shape[-2:])
        if tuple(size) != source and resolve_tile(options.tile_encoder, source, stride) is not None:
            # a reduced scale of an image that itself would be tiled: gather the input at its size
            # (as one tile) rather than resize it from the full-size float input (~28 B/px)
            return levels_of(lambda: scaled_region(base, mask_in, size, (0, size[0]), (0, size[1])))
        return levels_of(lambda: _scaled_input(base, mask_in, size))
    def region(rows, cols):
        return scaled_region(base, mask_in, size, rows, cols)
    return encode_tiled(levels_of, region, size, tile, halo)


def encode_levels(
    model, base, mask_in: Tensor, size: tuple[int, int], options: RefineOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder input at `size` (bilinear, align_corners=True) from the padded base input
    (1, C-1, Hp, Wp) (a tensor or a `pipeline.refine.inputs.PaddedImage`) and mask
    (1, 1, Hp, Wp) -> x1, x2, x3 of `model.feats` (over tiles with `options.tile_encoder`:
    `pipeline.refine.tiled`)."""
    return _encode(model, base, mask_in, size, options, lambda make: _levels_of(model, make, options))


def _reduce_in_place(fusion: Fusion, x1: Tensor, strip: int = _STRIP) -> Tensor:
    """Level-0 reduction written over x1's storage when the widths match (pointwise op)."""
    if fusion.aspp1_128.atrous_conv.out_channels != x1.shape[1]:
        return fusion.reduce_level(0, x1)
    for r0 in range(0, x1.shape[-2], strip):
        x1[:, :, r0 : r0 + strip] = fusion.reduce_level(0, x1[:, :, r0 : r0 + strip])
    return x1


def _reduced_of(model, make: Callable[[], Tensor], options: RefineOptions) -> tuple[Tensor, Tensor, Tensor]:
    """a1, a2, a3 (`model.aspp_.reduce` of the encoder levels) for the encoder input `make()`
    returns; with `layer1_strips` each level is reduced as soon as the encoder is done with it."""
    encoder, fusion = model.feats, model.aspp_
    if not (options.layer1_strips and isinstance(encoder, DilatedResNet)):
        return fusion.reduce(*_levels_of(model, make, options))
    inp = make()
    x1 = encoder.stem(inp)
    del inp
    x2 = layer1_in_strips(encoder, x1)
    a1 = _reduce_in_place(fusion, x1)
    del x1
    mid = halving_in_strips(encoder.layer2, x2)
    a2 = fusion.reduce_level(1, x2)
    del x2
    x3 = encoder.layer3(mid)
    del mid
    if not options.skip_layer4:
        encoder.layer4(x3)
    return a1, a2, fusion.reduce_level(2, x3)


def encode_reduced(
    model, base, mask_in: Tensor, size: tuple[int, int], options: RefineOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Like `encode_levels` followed by `model.aspp_.reduce`: -> a1, a2, a3 (over tiles with
    `options.tile_encoder`, each tile reduced before it is stitched)."""
    return _encode(model, base, mask_in, size, options, lambda make: _reduced_of(model, make, options))
