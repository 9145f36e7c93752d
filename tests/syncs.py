"""Counting the calls that would make the host wait for a GPU (host-device sync points).

On CUDA, reading a value back to the host (``.item()``, ``int()``, ``float()``, ``bool()``,
``.tolist()``, ``.cpu()``, ``.numpy()``), an op whose output size depends on the data
(``nonzero``, indexing with a boolean mask) or a tensor built from host data on the device
(``torch.tensor(..., device=)``, ``.to(device)`` of host data) waits for the queued kernels.
On a CPU run these calls cost nothing, but they are the same calls, so counting them under
a ``torch.overrides.TorchFunctionMode`` tells how often a CUDA run would sync::

    with SyncCounter() as syncs:
        refine(model, image, coarse)
    assert syncs.count <= 20, syncs.summary()
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["SyncCounter"]

_READS = {"item", "__int__", "__float__", "__bool__", "__index__", "tolist", "cpu", "numpy", "nonzero",
          "argwhere", "masked_select", "unique", "unique_consecutive"}
_FROM_HOST = {"tensor", "as_tensor"}
_MASK_INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _has_bool_index(args) -> bool:
    if len(args) < 2:
        return False
    index = args[1]
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _device_arg(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str)) and str(a).split(":")[0] in ("cpu", "cuda", "mps")
               for a in args[1:])


class SyncCounter(TorchFunctionMode):
    """Counts host-device sync points of the torch calls made inside the ``with`` block.

    ``count``: the total; ``calls``: a Counter of (call, 'file:line' of the caller in
    ``pipeline/``) -> times, to name where the syncs come from. With ``scope`` (a path part,
    e.g. "/pipeline/"), only calls made directly by code under it count: e.g. not the
    ``.item()`` that torch's Adam calls on its step counters, which live on the host.
    """

    def __init__(self, scope: str | None = None) -> None:
        super().__init__()
        self.scope = scope
        self.calls: Counter[tuple[str, str]] = Counter()

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def summary(self) -> str:
        return ", ".join(f"{name} at {where}: {n}" for (name, where), n in self.calls.most_common())

    def _record(self, name: str) -> None:
        stack = traceback.extract_stack()[:-2]
        if self.scope is not None and self.scope not in stack[-1].filename:
            return
        where = "?"
        for frame in reversed(stack):
            if "/pipeline/" in frame.filename:
                where = f"{frame.filename.split('/pipeline/')[-1]}:{frame.lineno}"
                break
        self.calls[(name, where)] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _READS:
            self._record(name)
        elif name in _FROM_HOST and kwargs.get("device") is not None:
            self._record(f"{name}(device=)")
        elif name in ("to", "cuda") and _device_arg(args, kwargs):
            self._record(f"{name}(device)")
        elif name in _MASK_INDEXING and _has_bool_index(args):
            self._record(f"{name}[bool mask]")
        return func(*args, **kwargs)
