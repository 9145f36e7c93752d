"""Random-weight SAMs that still produce many distinct masks (tests and benchmarks only).

A SAM with default random weights predicts near-constant, checkerboard-patterned logits of
magnitude < 1: every point prompt gives the same image-wide mask with stability 0, so the
automatic generator keeps nothing (or one mask) and a comparison or a benchmark exercises
nothing. `make_busy` rearranges the random weights of the real classes so that:

- the mask decoder's transposed convolutions use one tap for the whole 2x2 kernel (no
  checkerboard: logits follow image content, i.e. regions);
- the output tokens start at zero and the prompt positional encoding has a higher frequency, so
  each point prompt yields a different hypernetwork vector (a different subset of regions);
- the hypernetwork output is scaled so logits reach well past +-1 (stability scores spread over
  [0, 1]), and ``iou_bias`` is added to the IoU head (so predicted IoUs can pass 0.88).

Never used for real inference: real runs load Meta's checkpoints.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

__all__ = ["make_busy"]


@torch.no_grad()
def make_busy(sam: Sam, logit_scale: float = 2000.0, pe_scale: float = 10.0, iou_bias: float = 0.0) -> Sam:
    """Rearrange ``sam``'s (random) decoder weights in place as described above; returns it."""
    dec = sam.mask_decoder
    for layer in dec.output_upscaling:
        if isinstance(layer, torch.nn.ConvTranspose2d):
            layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight))
    for mlp in dec.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(logit_scale)
    sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(pe_scale)
    dec.mask_tokens.weight.zero_()
    dec.iou_token.weight.zero_()
    dec.iou_prediction_head.layers[-1].bias.add_(iou_bias)
    return sam
