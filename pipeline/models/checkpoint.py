"""Checkpoint files: load (strict, clear errors), save in official naming, hash.

Weights are read with fsspec (local paths or any URL fsspec opens) and
`torch.load(map_location="cpu", weights_only=True)`; gzip-compressed files are accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import io

import fsspec
import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "checkpoint_hash",
    "strip_prefix",
    "OFFICIAL_PREFIX",
]

OFFICIAL_PREFIX = "module."  # nn.DataParallel(model).state_dict()
_WRAPPER_KEYS = ("state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model.

    The message names the file and the first bad key (and shapes where relevant).
    """


def _read_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {uri}: file not found") from exc
    except OSError as exc:
        raise CheckpointError(f"checkpoint {uri}: cannot be opened ({exc})") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"checkpoint {uri}: truncated or corrupt gzip data ({exc})") from exc
    return data


def load_checkpoint(uri: str) -> dict[str, Tensor]:
    """Read a state dict (key -> tensor) from a path or fsspec URL.

    A dict wrapping the state dict under "state_dict" or "model" is unwrapped. Keys are
    returned as stored (see `strip_prefix`). Raises CheckpointError naming the file.
    """
    data = _read_bytes(uri)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"checkpoint {uri}: cannot be read, truncated or not a torch state dict "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    for wrapper in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {uri}: expected a state dict, found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"checkpoint {uri}: key {key!r} holds {type(value).__name__}, not a tensor")
    return obj


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = OFFICIAL_PREFIX) -> dict[str, Tensor]:
    """Remove `prefix` ("module.") from the keys that carry it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str = "<state dict>") -> nn.Module:
    """Load `state_dict` (with or without "module.") into `model` strictly.

    Raises CheckpointError naming `source` and the first missing, unexpected or
    mis-shaped key (in the model's own key order).
    """
    given = strip_prefix(state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in given:
            raise CheckpointError(f"checkpoint {source}: missing key {key!r}")
        if tuple(given[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {source}: key {key!r} has shape {tuple(given[key].shape)}, "
                f"model expects {tuple(value.shape)}"
            )
    for key in given:
        if key not in expected:
            raise CheckpointError(f"checkpoint {source}: unexpected key {key!r}")
    model.load_state_dict(given, strict=True)
    return model


def save_checkpoint(model: nn.Module, uri: str, prefix: str = OFFICIAL_PREFIX) -> str:
    """Write `model`'s state dict in the official format (keys prefixed "module.").

    Returns `uri`. Parent directories of local paths are created.
    """
    state = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with fsspec.open(uri, "wb", auto_mkdir=True) as handle:
        handle.write(buffer.getvalue())
    return uri


def checkpoint_hash(uri: str) -> str:
    """sha256 of the file's bytes as stored, hex, first 16 characters."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {uri}: file not found") from exc
    return digest.hexdigest()[:16]
