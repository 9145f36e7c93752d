"""CRM's training loss: BCE + L1 + MSE on the probability + L1 between Sobel gradients.

CRM / CascadePSP weights: 1.0 (BCE), 0.5 (L1), 0.5 (MSE), 2.0 (gradient L1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossWeights", "sobel", "refine_loss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms (CRM's published recipe by default)."""

    bce: float = 1.0
    l1: float = 0.5
    mse: float = 0.5
    grad: float = 2.0

    @classmethod
    def parse(cls, text: str) -> LossWeights:
        """From "bce,l1,mse,grad", e.g. "1,0.5,0.5,2"; raises ValueError naming the text."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise ValueError(f"loss weights {text!r}: expected 4 comma-separated numbers") from exc
        if len(values) != 4 or any(v < 0 for v in values):
            raise ValueError(f"loss weights {text!r}: expected 4 non-negative numbers bce,l1,mse,grad")
        return cls(*values)


def sobel(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of (B, 1, H, W) -> (B, 1, H, W) (replicate padding, eps 1e-8 inside sqrt)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-8)


def refine_loss(logits: Tensor, gt: Tensor,
                weights: LossWeights = LossWeights()) -> tuple[Tensor, dict[str, float]]:
    """Loss of logits (B, 1, H, W) against gt (B, 1, H, W) float in {0, 1}.

    Returns (total scalar tensor, {"bce", "l1", "mse", "grad", "total"} as floats).
    """
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
    out = {k: float(v.detach()) for k, v in parts.items()}
    out["total"] = float(total.detach())
    return total, out
