"""What every benchmark does about its device: name it, warm it up, keep its math exact.

- :func:`device_name`: the card's name (``cuda:0 NVIDIA H100 80GB HBM3``) or the CPU's, for the
  header of every table, so a number is never read without the machine that made it;
- :func:`timed`: a warm-up call, a device sync, then the timed call (and a sync): CUDA's
  start-up, cuDNN's algorithm search and lazy kernel loading stay out of the timed run;
- :func:`exact_math`: TF32 off for matmuls and cuDNN convolutions, where a benchmark compares
  outputs for identity (TF32 rounds inputs to 10 mantissa bits on Ampere and newer cards).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["device_name", "exact_math", "synchronize", "timed"]

T = TypeVar("T")


def device_name(device: Any) -> str:
    """``cuda:N <card name>`` for a CUDA device, ``cpu (<processor>, N threads)`` otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    processor = platform.processor() or platform.machine()
    return f"{device.type} ({processor}, {torch.get_num_threads()} threads)"


def exact_math() -> None:
    """TF32 off (matmul and cuDNN), for benchmarks that claim identical outputs."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Any, warm_up: Callable[[], object] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> tuple[T, float]:
    """(fn(), its wall seconds): ``warm_up()`` (default: ``fn`` itself) runs first, untimed."""
    (warm_up or fn)()
    synchronize(device)
    start = clock()
    out = fn()
    synchronize(device)
    return out, clock() - start
