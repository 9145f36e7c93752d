"""SAM checkpoints: local path or fsspec URL, cached locally, checked before any image.

A remote checkpoint (any fsspec URL with a protocol other than ``file``) is copied once to
``<cache_dir>/<sha256(url)[:16]>-<file name>`` (default cache dir ``~/.cache/samsr/sam``, or
``$SAMSR_CACHE_DIR/sam``), through a temporary file renamed into place, so a crashed download
never leaves a half file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["cache_dir", "load_state_dict_checked", "local_checkpoint", "read_state_dict"]


def cache_dir() -> Path:
    """Where remote SAM checkpoints are cached: ``$SAMSR_CACHE_DIR/sam`` or ``~/.cache/samsr/sam``."""
    root = os.environ.get("SAMSR_CACHE_DIR")
    return Path(root) / "sam" if root else Path.home() / ".cache" / "samsr" / "sam"


def local_checkpoint(uri: str, cache: str | Path | None = None) -> Path:
    """A local path holding the checkpoint ``uri`` (a path, ``file://`` URL or fsspec URL)."""
    import fsspec  # I/O only here; the model code never sees fsspec

    protocol, path = fsspec.core.split_protocol(str(uri))
    if protocol in (None, "file", "local"):
        local = Path(path).expanduser()
        if not local.is_file():
            raise ValueError(f"SAM checkpoint {uri}: no such file")
        return local
    target_dir = Path(cache) if cache is not None else cache_dir()
    name = Path(path).name or "checkpoint.pth"
    target = target_dir / f"{hashlib.sha256(str(uri).encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        fs, remote = fsspec.core.url_to_fs(str(uri))
        with fs.open(remote, "rb") as src, tempfile.NamedTemporaryFile(
            dir=target_dir, prefix=".part-", delete=False
        ) as dst:
            tmp = Path(dst.name)
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except FileNotFoundError as err:
        raise ValueError(f"SAM checkpoint {uri}: no such file") from err
    except OSError as err:
        raise ValueError(f"SAM checkpoint {uri}: cannot be read ({type(err).__name__}: {err})") from err
    os.replace(tmp, target)
    return target


def read_state_dict(uri: str, cache: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``uri``, loaded on CPU with ``weights_only=True``.

    Raises ValueError naming the file when it is missing, not a torch file (truncated,
    corrupt, pickled code) or not a flat dict of tensors.
    """
    local = local_checkpoint(uri, cache)
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(
            f"SAM checkpoint {uri}: not a readable torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(state, dict) or not state:
        raise ValueError(f"SAM checkpoint {uri}: expected a non-empty state dict, got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"SAM checkpoint {uri}: entry {bad[0]!r} is not a tensor")
    return state


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], uri: str) -> None:
    """``model.load_state_dict(state)`` with an error naming ``uri`` and the first bad key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
        raise ValueError(
            f"SAM checkpoint {uri}: does not match the model: {'; '.join(parts)} "
            "(wrong model type for this checkpoint?)"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"SAM checkpoint {uri}: key {k!r} has shape {tuple(state[k].shape)}, the model "
                f"expects {tuple(v.shape)} (wrong model type for this checkpoint?)"
            )
    model.load_state_dict(state)
