"""Exact, faster versions of two of segment-anything's mask post-processing steps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["mask_boxes", "upscale_logits", "pack_masks", "shift_pack"]


def upscale_logits(low_res: torch.Tensor, img_size: int, input_size: tuple[int, int],
                   original_size: tuple[int, int]) -> torch.Tensor:
    """`Sam.postprocess_masks`, computing only the part of the padded upscale that is kept.

    low_res: (B, C, 256, 256) float logits; returns (B, C, *original_size) float logits, equal
    bit for bit to ``sam.postprocess_masks(low_res, input_size, original_size)``. Bilinear
    interpolation (align_corners=False) by an integer factor maps output pixel i to source
    (i + 0.5) / f - 0.5, so the first ``input_size`` output rows/columns depend only on the first
    ceil(input_size / f) + 1 source rows/columns; interpolating those to f times their size keeps
    the same grid and the same weights.
    """
    lh, lw = low_res.shape[-2:]
    fh, fw = img_size // lh, img_size // lw
    if fh * lh != img_size or fw * lw != img_size:  # not an integer factor: do it the stock way
        up = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    else:
        rh = min(lh, -(-input_size[0] // fh) + 1)
        rw = min(lw, -(-input_size[1] // fw) + 1)
        up = F.interpolate(low_res[..., :rh, :rw].contiguous(), (rh * fh, rw * fw), mode="bilinear",
                           align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(original_size) == tuple(input_size):
        return up  # an identity resize returns its input unchanged
    return F.interpolate(up, tuple(original_size), mode="bilinear", align_corners=False)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`segment_anything.utils.amg.batched_mask_to_box` for (K, h, w) bool masks, faster.

    Returns (K, 4) int64 XYXY boxes (inclusive pixel coordinates), [0, 0, 0, 0] for an empty
    mask, equal to SAM's. Uses ``any`` reductions instead of ``max`` with indices.
    """
    k, h, w = masks.shape
    if k == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(2)  # (K, h)
    cols = masks.any(1)  # (K, w)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, ar_h, -1).amax(1)
    top = torch.where(rows, ar_h, h).amin(1)
    right = torch.where(cols, ar_w, -1).amax(1)
    left = torch.where(cols, ar_w, w).amin(1)
    out = torch.stack([left, top, right, bottom], dim=1)
    return torch.where(rows.any(1)[:, None], out, torch.zeros_like(out))


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """``np.packbits(masks.flatten(1), axis=1)`` on the masks' device: (K, h, w) bool -> (K,
    ceil(h * w / 8)) uint8, the first pixel in the top bit, the last byte padded with zeros. On a
    GPU the masks then come back to the host at an eighth of their bool size (shifts and a sum
    there; numpy on CPU)."""
    if masks.device.type == "cpu":  # numpy's packbits is the faster there, same bytes
        return torch.from_numpy(np.packbits(masks.flatten(1).numpy(), axis=1))
    return shift_pack(masks)


def shift_pack(masks: torch.Tensor) -> torch.Tensor:
    """:func:`pack_masks` by torch ops on the masks' device (bit shifts and a uint8 sum)."""
    flat = masks.flatten(1).to(torch.uint8)
    pad = -flat.shape[1] % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=flat.device)  # made there: no copy over
    return (flat.view(flat.shape[0], flat.shape[1] // 8, 8) << shifts).sum(-1, dtype=torch.uint8)
