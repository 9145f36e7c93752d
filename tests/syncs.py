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

Host-side work (numpy-like torch ops on tensors already read back) makes the same calls on a CPU
run; ``SyncCounter(device=[model])`` tells them apart by following where each tensor would live
on a GPU: on the device are the modules' parameters and buffers, tensors made with ``device=``
or moved with ``.to(device)`` / ``.cuda()``, and every result of a call that takes a device
tensor, except the read-backs (``.cpu()``, ``.numpy()``, ...), whose results are on the host.
Then only reads of device tensors, transfers of host tensors to the device, and data-dependent
ops on device tensors count.
"""

from __future__ import annotations

import traceback
import weakref
from collections import Counter
from collections.abc import Iterable

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

    def __init__(self, scope: str | None = None, device: Iterable[torch.nn.Module] | None = None) -> None:
        super().__init__()
        self.scope = scope
        self.calls: Counter[tuple[str, str]] = Counter()
        self.tracked = device is not None
        self._on_device: dict[int, weakref.ref] = {}  # by id: tensors' == is elementwise
        self._device_objects: dict[int, torch.device] = {}  # `.device` of device tensors (kept alive)
        for module in device or ():
            for t in (*module.parameters(), *module.buffers()):
                self._mark(t)

    def _mark(self, t: torch.Tensor) -> None:
        self._on_device[id(t)] = weakref.ref(t)

    def _is_on_device(self, t: torch.Tensor) -> bool:
        ref = self._on_device.get(id(t))
        return ref is not None and ref() is t

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

    def _tensors(self, value) -> Iterable[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from self._tensors(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from self._tensors(v)

    def _is_device_value(self, value) -> bool:
        """A ``device=`` / ``.to()`` argument naming the device: the ``.device`` of a device
        tensor, a device tensor (``.to(other)``), or a GPU by name; "cpu" and host tensors' devices
        name the host."""
        if isinstance(value, torch.Tensor):
            return self._is_on_device(value)
        if isinstance(value, torch.device):
            return id(value) in self._device_objects or value.type != "cpu"
        return isinstance(value, str) and value.split(":")[0] in ("cuda", "mps")

    def _to_device(self, name: str, args, kwargs) -> bool:
        """The call makes its result on (or moves it to) the device."""
        if name == "cuda":
            return True
        if self._is_device_value(kwargs.get("device")):
            return True
        return name == "to" and any(self._is_device_value(a) for a in args[1:])

    def _device(self, value) -> bool:
        return any(self._is_on_device(t) for t in self._tensors(value))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if not self.tracked:
            if name in _READS:
                self._record(name)
            elif name in _FROM_HOST and kwargs.get("device") is not None:
                self._record(f"{name}(device=)")
            elif name in ("to", "cuda") and _device_arg(args, kwargs):
                self._record(f"{name}(device)")
            elif name in _MASK_INDEXING and _has_bool_index(args):
                self._record(f"{name}[bool mask]")
            return func(*args, **kwargs)
        inputs_on_device = self._device(args) or self._device(kwargs)
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in _READS:
            if inputs_on_device:
                self._record(name)
            out = func(*args, **kwargs)
            if out is source:  # .cpu() of a CPU tensor is itself: the host copy is a new tensor
                out = out.clone()
            return out
        if name == "__get__" and getattr(func, "__self__", None) is torch.Tensor.device:
            out = func(*args, **kwargs)
            if inputs_on_device:
                self._device_objects[id(out)] = out
            return out
        moved = self._to_device(name, args, kwargs)
        if moved and not inputs_on_device and (name in ("to", "cuda") or name in _FROM_HOST):
            # host data copied over
            self._record(f"{name}(device)" if name in ("to", "cuda") else f"{name}(device=)")
        elif name in _MASK_INDEXING and _has_bool_index(args) and inputs_on_device:
            self._record(f"{name}[bool mask]")
        elif name in ("__setitem__", "copy_") and source is not None and not self._is_on_device(source) \
                and self._device(args[1:]):
            self._record(f"{name}(device -> host)")
        out = func(*args, **kwargs)
        if moved and out is source:  # .to(device) of a CPU tensor on a CPU run: the device copy is new
            out = out.clone()
        if inputs_on_device or moved:
            for t in self._tensors(out):
                self._mark(t)
        return out
