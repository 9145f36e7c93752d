"""CRM's training loss: L1 + MSE on the probability + L1 between (smoothed) Sobel gradients, and
an optional BCE term.

Defaults are CRM's published weights (dvlab-research/Entity, CRM training code): BCE 0, L1 1,
MSE 1, gradient 5, the gradient taken with a Sobel filter after a 3 x 3 box average, magnitude
sqrt(gx^2 + gy^2 + 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossWeights", "LOSS_PARTS", "sobel", "refine_loss", "refine_loss_terms"]

SOBEL_EPS = 1e-4
LOSS_PARTS = ("bce", "l1", "mse", "grad", "total")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms (CRM's published recipe by default)."""

    bce: float = 0.0
    l1: float = 1.0
    mse: float = 1.0
    grad: float = 5.0

    @classmethod
    def parse(cls, text: str) -> LossWeights:
        """From "bce,l1,mse,grad", e.g. "0,1,1,5"; raises ValueError naming the text."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise ValueError(f"loss weights {text!r}: expected 4 comma-separated numbers") from exc
        if len(values) != 4 or any(v < 0 for v in values):
            raise ValueError(f"loss weights {text!r}: expected 4 non-negative numbers bce,l1,mse,grad")
        return cls(*values)


def sobel(x: Tensor) -> Tensor:
    """Gradient magnitude of (B, 1, H, W) -> (B, 1, H, W): 3 x 3 box average, then Sobel x/y,
    sqrt(gx^2 + gy^2 + 1e-4); replicate padding for both filters."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    g = F.conv2d(F.pad(smooth, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + SOBEL_EPS)


def refine_loss_terms(logits: Tensor, gt: Tensor,
                      weights: LossWeights = LossWeights()) -> tuple[Tensor, Tensor]:
    """Loss of logits (B, 1, H, W) against gt (B, 1, H, W) float in [0, 1], on their device:
    (total scalar tensor, (5,) tensor of the parts in the order of ``LOSS_PARTS``)."""
    if logits.shape != gt.shape:
        raise ValueError(f"refine_loss: logits {tuple(logits.shape)} and gt {tuple(gt.shape)} differ")
    prob = torch.sigmoid(logits)
    parts = {
        "bce": F.binary_cross_entropy_with_logits(logits, gt),
        "l1": F.l1_loss(prob, gt),
        "mse": F.mse_loss(prob, gt),
        "grad": F.l1_loss(sobel(prob), sobel(gt)),
    }
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, torch.stack([*parts.values(), total]).detach()


def refine_loss(logits: Tensor, gt: Tensor,
                weights: LossWeights = LossWeights()) -> tuple[Tensor, dict[str, float]]:
    """`refine_loss_terms`, the parts read back to the host at once:
    (total scalar tensor, {"bce", "l1", "mse", "grad", "total"} as floats)."""
    total, parts = refine_loss_terms(logits, gt, weights)
    return total, dict(zip(LOSS_PARTS, parts.tolist()))
