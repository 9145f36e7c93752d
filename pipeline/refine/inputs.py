"""The cascade's padded network input, built in row chunks straight from the uint8 arrays.

`make_input` + `reflect_pad` + alignment over whole float32 images hold about 12 float channels
per pixel at once (RGB, mask, the concatenated input, the padded copies: ~48 bytes/px, 9 GB at
16000x12000). Here padding is an index map per axis (the same positions `reflect_pad` and the
alignment pick, same step schedule), and the padded, normalised input is written into one
preallocated buffer chunk by chunk from the uint8 image: the peak is the buffer (3 or 6 float
channels), the padded mask and the resized coarse mask (one float channel each). The values are
those of the whole-image computation (same float operations, elementwise).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.crm import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["pad_index", "padded_base", "padded_mask", "coarse01_tensor", "PaddedImage"]

_CHUNK_ROWS = 256


def pad_index(h: int, w: int, pad: int, align: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row / column of every position of the (h, w) image reflect-padded by `pad` (as
    `cascade.reflect_pad`: steps of min(remaining, h-1, w-1), replicate when a side is 1) and then
    padded at the bottom/right to multiples of `align` (reflect, replicate when short)."""
    rows, cols = np.arange(h), np.arange(w)
    remaining = pad
    while remaining > 0:
        if min(rows.size, cols.size) == 1:
            rows, cols = np.pad(rows, remaining, mode="edge"), np.pad(cols, remaining, mode="edge")
            break
        step = min(remaining, rows.size - 1, cols.size - 1)
        rows, cols = np.pad(rows, step, mode="reflect"), np.pad(cols, step, mode="reflect")
        remaining -= step
    dh, dw = -rows.size % align, -cols.size % align
    if dh or dw:
        mode = "reflect" if dh < rows.size and dw < cols.size else "edge"
        rows, cols = np.pad(rows, (0, dh), mode=mode), np.pad(cols, (0, dw), mode=mode)
    return rows, cols


def _device_array(a: np.ndarray, device: torch.device) -> Tensor:
    """``a`` as a tensor on ``device`` (on the CPU the array's own memory when it can be shared)."""
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")
    return torch.from_numpy(a).to(device)


class PaddedImage:
    """The padded, normalised base input (RGB [+ colours]) without holding it as float: the uint8
    arrays and the padding index maps go to the device once, and regions are gathered and
    normalised there on demand (`take`, `full`), in row chunks, with the values of the whole-image
    computation (ImageNet-normalised RGB, colours * 2 - 1). No value is read back to the host, so
    a tiled encoder's regions cost no device-host synchronisation.

    image: (H, W, 3) uint8; colors: (H, W, 3) uint8 or None; rows, cols: `pad_index` maps.
    ``shape`` is that of the padded tensor: (1, 3 or 6, Hp, Wp).
    """

    def __init__(self, image: np.ndarray, colors: np.ndarray | None, rows: np.ndarray, cols: np.ndarray,
                 device) -> None:
        self.device = torch.device(device)
        self.image = _device_array(image, self.device)
        self.colors = None if colors is None else _device_array(colors, self.device)
        self.rows = torch.from_numpy(rows).to(self.device)
        self.cols = torch.from_numpy(cols).to(self.device)
        self.mean, self.std = torch.tensor([IMAGENET_MEAN, IMAGENET_STD], dtype=torch.float32).view(
            2, 3, 1, 1).to(self.device)
        self.shape = (1, 3 if colors is None else 6, rows.size, cols.size)

    def take(self, rows: Tensor, cols: Tensor) -> Tensor:
        """(1, C, len(rows), len(cols)) float32 at padded positions ``rows`` x ``cols`` (int64)."""
        return self._gather(self.rows[rows], self.cols[cols])

    def full(self) -> Tensor:
        """The whole (1, C, Hp, Wp) float32 tensor."""
        return self._gather(self.rows, self.cols)

    def _gather(self, rows: Tensor, cols: Tensor) -> Tensor:
        out = torch.empty((1, self.shape[1], rows.shape[0], cols.shape[0]), dtype=torch.float32,
                          device=self.device)
        for r0 in range(0, rows.shape[0], _CHUNK_ROWS):
            index = rows[r0 : r0 + _CHUNK_ROWS]
            n = index.shape[0]
            rgb = self.image[index][:, cols].permute(2, 0, 1).float() / 255
            out[0, :3, r0 : r0 + n] = (rgb - self.mean) / self.std
            if self.colors is not None:
                part = self.colors[index][:, cols].permute(2, 0, 1).float() / 255
                out[0, 3:, r0 : r0 + n] = part * 2 - 1
        return out


def padded_base(image: np.ndarray, colors: np.ndarray | None, rows: np.ndarray, cols: np.ndarray,
                device) -> Tensor:
    """(1, 3 or 6, Hp, Wp) float32: ImageNet-normalised RGB [+ colours * 2 - 1] of the (H, W)
    uint8 arrays at the padded positions `rows` x `cols` (colours already at (H, W))."""
    return PaddedImage(image, colors, rows, cols, device).full()


def coarse01_tensor(coarse: np.ndarray, size: tuple[int, int], device) -> Tensor:
    """(1, 1, H, W) coarse mask in [0, 1], bilinearly resized to ``size`` when it differs."""
    source = coarse if coarse.flags.writeable else coarse.copy()
    mask = torch.from_numpy(source).to(device)[None, None].float()
    if mask.shape[-2:] != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0, 255)
    return mask.div_(255)


def padded_mask(mask01: Tensor, rows: np.ndarray | Tensor, cols: np.ndarray | Tensor) -> Tensor:
    """(1, 1, Hp, Wp) mask in [-1, 1] at the padded positions of the (1, 1, H, W) mask in [0, 1]
    (``rows`` / ``cols``: `pad_index` maps, as arrays or as tensors on the mask's device)."""
    r = rows if isinstance(rows, Tensor) else torch.from_numpy(rows).to(mask01.device)
    c = cols if isinstance(cols, Tensor) else torch.from_numpy(cols).to(mask01.device)
    out = mask01[:, :, r][:, :, :, c]
    return out.mul_(2).sub_(1)
