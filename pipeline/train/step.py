"""One optimisation step of the refiner on a batch of crops (shared by Ray Train and plain runs).

A batch is a dict of float32 tensors: ``image`` (B, 3, S, S) RGB in [0, 1], ``coarse``
(B, 1, S, S) in [0, 1], ``gt`` (B, 1, S, S) in {0, 1}, and for SAM-SR-v2.1 models ``sam``
(B, 3, S, S) colour map in [0, 1]. The network encodes the (optionally downscaled) crop and is
queried at pixel centres of the S x S crop, as at inference (cell = 2/S): either every pixel
(``patch=0``) or, to keep the implicit decoder cheap on CPU, ``patches`` dense P x P windows
per crop (LIIF trains on 48 x 48 = 2304 sampled queries per image), centred on a ground-truth
boundary pixel with probability ``p_boundary``; all loss terms (incl. the Sobel gradient term)
are computed on those dense windows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.crm import make_coord, make_input
from pipeline.train.loss import LossWeights, refine_loss

__all__ = ["forward_crops", "patch_origins", "train_step"]


def _takes_proposals(model: nn.Module) -> bool:
    return bool(getattr(model, "module", model).takes_proposals)  # through DDP's wrapper


def patch_origins(gt: Tensor, patch: int, count: int, rng: np.random.Generator,
                  p_boundary: float = 0.7) -> np.ndarray:
    """Top-left corners (B, count, 2) int (row, col) of P x P windows inside S x S crops.

    gt: (B, 1, S, S) in {0, 1}. A window is centred on a boundary pixel (gt differs from a
    4-neighbour) with probability ``p_boundary`` when the crop has one, else placed uniformly.
    """
    b, _, h, w = gt.shape
    if patch > min(h, w):
        raise ValueError(f"patch {patch} larger than the crop {h}x{w}")
    g = gt[:, 0] > 0.5
    edge = torch.zeros_like(g)
    edge[:, 1:] |= g[:, 1:] != g[:, :-1]
    edge[:, :, 1:] |= g[:, :, 1:] != g[:, :, :-1]
    edge = edge.cpu().numpy()  # one read back per batch, not one per window
    out = np.zeros((b, count, 2), np.int64)
    for i in range(b):
        ys, xs = np.nonzero(edge[i])
        for k in range(count):
            if len(ys) and rng.random() < p_boundary:
                j = int(rng.integers(len(ys)))
                cy, cx = int(ys[j]), int(xs[j])
                y0, x0 = cy - patch // 2 + int(rng.integers(-patch // 4, patch // 4 + 1)), \
                    cx - patch // 2 + int(rng.integers(-patch // 4, patch // 4 + 1))
            else:
                y0, x0 = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            out[i, k] = (min(max(y0, 0), h - patch), min(max(x0, 0), w - patch))
    return out


def _gather_windows(x: Tensor, origins: np.ndarray, patch: int) -> Tensor:
    """(B, C, S, S) -> (B * K, C, P, P) windows at origins (B, K, 2)."""
    return torch.stack([x[i, :, y:y + patch, c:c + patch] for i in range(x.shape[0])
                        for y, c in origins[i]])


def forward_crops(model: nn.Module, batch: dict[str, Tensor], input_scale: float = 1.0,
                  origins: np.ndarray | None = None, patch: int = 0) -> Tensor:
    """Logits at the queried pixel centres of the crops.

    Without ``origins``: every pixel, (B, 1, S, S). With ``origins`` (B, K, 2) and ``patch`` P:
    the K dense windows per crop, (B * K, 1, P, P) (ordered like :func:`_gather_windows`).
    ``input_scale`` < 1 encodes a bilinearly downscaled input (align_corners=True, as the
    multi-scale inference resizes) while still querying the full-resolution crop grid.
    """
    image, coarse = batch["image"], batch["coarse"]
    b, _, h, w = image.shape
    takes = _takes_proposals(model)
    sam = batch.get("sam") if takes else None
    if takes and sam is None:
        raise ValueError("model takes 7 input channels (SAM-SR-v2.1) but the batch has no 'sam' colour maps")
    inp = make_input(image, coarse, sam)
    if input_scale != 1.0:  # sizes in multiples of 8, as refine(align=8) encodes
        size = (max(16, round(h * input_scale / 8) * 8), max(16, round(w * input_scale / 8) * 8))
        inp = F.interpolate(inp, size=size, mode="bilinear", align_corners=True)
    grid = make_coord((h, w), device=image.device, flatten=False)  # (S, S, 2)
    mask = coarse[:, 0] * 2 - 1  # (B, S, S): the incoming mask at the full-resolution queries
    if origins is None:
        coord = grid.reshape(1, h * w, 2).expand(b, -1, -1)
        prior = mask.reshape(b, h * w)
    else:
        coord = torch.stack([torch.cat([grid[y:y + patch, c:c + patch].reshape(-1, 2) for y, c in origins[i]])
                             for i in range(b)])
        prior = torch.stack([torch.cat([mask[i, y:y + patch, c:c + patch].reshape(-1) for y, c in origins[i]])
                             for i in range(b)])
    q = coord.shape[1]
    cell = torch.full((1, 1, 2), 2.0 / h, device=image.device)  # filled on the device: no copy from the host
    cell[..., 1] = 2.0 / w
    cell = cell.expand(b, q, 2)
    logits = model(inp, coord, cell, prior)
    if origins is None:
        return logits.view(b, 1, h, w)
    return logits.reshape(b * origins.shape[1], 1, patch, patch)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor],
               weights: LossWeights = LossWeights(), input_scale: float = 1.0, patch: int = 0,
               patches: int = 2, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Forward, loss (:func:`refine_loss`), backward and optimizer step; returns the loss parts.

    ``patch`` = 0 queries every pixel of the crop; otherwise ``patches`` windows of ``patch`` px
    per crop (see module docstring). Raises FloatingPointError if the loss is not finite (the
    step is not applied).
    """
    model.train()
    gt = batch["gt"]
    if patch:
        origins = patch_origins(gt, patch, patches, rng or np.random.default_rng())
        logits = forward_crops(model, batch, input_scale, origins, patch)
        gt = _gather_windows(gt, origins, patch)
    else:
        logits = forward_crops(model, batch, input_scale)
    loss, parts = refine_loss(logits, gt, weights)
    if not math.isfinite(parts["total"]):
        raise FloatingPointError(f"non-finite training loss {parts}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts
