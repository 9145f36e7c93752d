"""Encoder step of one cascade scale, optionally with `layer1` run in row strips.

The encoder's memory peak is `layer1` (256 channels at stride 4, next to x1). Its 3x3 convs
and the preceding 3x3/2 max-pool only see 4 rows of context at stride 4, so running it over
row strips with a 4-row halo and keeping the interior rows gives exactly the whole-map result
while holding only one strip's temporaries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.resnet import DilatedResNet
from pipeline.refine.options import RefineOptions

__all__ = ["encode_levels", "layer1_in_strips"]

_HALO = 4  # rows at stride 4: 1 for the max-pool, 1 per 3x3 conv of layer1's 3 blocks


def layer1_in_strips(encoder: DilatedResNet, x1: Tensor, strip: int = 128) -> Tensor:
    """maxpool + layer1 of (B, 64, H1, W1) -> (B, 256, ceil(H1/2), ceil(W1/2)), by row strips
    of `strip` output rows; equal to `encoder.layer1(encoder.maxpool(x1))`."""
    h1 = x1.shape[-2]
    h2 = (h1 + 1) // 2
    if h2 <= strip + 2 * _HALO:
        return encoder.layer1(encoder.maxpool(x1))
    out = None
    for o0 in range(0, h2, strip):
        o1 = min(o0 + strip, h2)
        start = max(0, o0 - _HALO)  # in stride-4 rows; x1 rows from 2 * start (even)
        stop = min(h2, o1 + _HALO)
        part = encoder.layer1(encoder.maxpool(x1[:, :, 2 * start : min(h1, 2 * stop)]))
        if out is None:
            out = part.new_empty((*part.shape[:2], h2, part.shape[-1]))
        out[:, :, o0:o1] = part[:, :, o0 - start : o1 - start]
    return out


def encode_levels(
    model, base: Tensor, mask_in: Tensor, size: tuple[int, int], options: RefineOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder input at `size` (bilinear, align_corners=True) from the padded base input
    (1, C-1, Hp, Wp) and mask (1, 1, Hp, Wp) -> x1, x2, x3 of `model.feats`."""
    inp = torch.cat([base[:, :3], mask_in, base[:, 3:]], dim=1)
    inp = F.interpolate(inp, size=size, mode="bilinear", align_corners=True)
    encoder = model.feats
    if not (options.layer1_strips and isinstance(encoder, DilatedResNet)):
        return encoder(inp, run_layer4=not options.skip_layer4)
    x1 = encoder.stem(inp)
    del inp
    x2 = layer1_in_strips(encoder, x1)
    x3 = encoder.layer3(encoder.layer2(x2))
    if not options.skip_layer4:
        encoder.layer4(x3)
    return x1, x2, x3
