"""Fake CUDA tensors on a machine without a GPU: any CPU/CUDA mix raises, as on a real card.

Inside ``fake_cuda()``, torch runs under ``FakeTensorMode``: tensors made on (or moved to)
"cuda" are fake CUDA tensors (shapes, dtypes and devices, no data), and an op that mixes them
with a CPU tensor of more than one element raises ``FakeTensorDeviceMismatchError``, like the
real "Expected all tensors to be on the same device" error. ``torch.autocast("cuda", ...)``
works there too (torch turns it off when no GPU is visible; this context lets it through), so
bf16 / fp16 casts are checked as well. Reading values (``.item()``, ``nonzero``, ``.cpu()``
then numpy) is not possible on fake tensors: tests run the device-side parts.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

__all__ = ["fake_cuda", "to_fake_cuda"]


class _CudaAutocast(torch.autocast):
    """torch.autocast without the "is a GPU visible / does it have bf16" checks of its __init__."""

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        with mock.patch("torch.cuda.is_available", return_value=True), \
                mock.patch("torch.cuda.is_bf16_supported", return_value=True):
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


@contextlib.contextmanager
def fake_cuda():
    """A FakeTensorMode in which "cuda" tensors exist and CUDA autocast applies."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, mock.patch.object(torch, "autocast", _CudaAutocast):
        yield mode


def to_fake_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """``module.to("cuda")`` (in place) inside an active ``fake_cuda()``: fake CUDA parameters."""
    return module.to("cuda")
