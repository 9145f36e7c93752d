"""The one state-dict reader and writer, for refiner (CRM / SAM-SR), SAM and training checkpoints.

- `read_state_dict(uri)`: a local path or any fsspec URL; gzip-compressed files accepted;
  ``torch.load(map_location="cpu", weights_only=True)`` (never pickled code); a dict wrapping
  the state dict under ``state_dict`` or ``model`` (training checkpoints) is unwrapped; every
  value must be a tensor. ``cache=True`` (large SAM files) copies a remote file once to
  ``<cache_dir>/<sha256(url)[:16]>-<name>`` through a temporary file renamed into place, so a
  crashed download never leaves a half file that looks complete.
- `save_checkpoint` / `checkpoint_hash`: the official key format, sha256 of the stored bytes.

- `read_torch_bytes`: the same loader for bytes already read (training checkpoints).

Every file samsr reads with torch goes through here: refiner, SAM, the ImageNet MobileNetV2
backbone, training checkpoints. Fitting a state dict to a model (prefix stripping, stem growth,
strict key/shape checks) is pure and lives in `pipeline.models.checkpoint.load_weights`. Every error is a
`CheckpointError` (a ValueError) naming the file and, for a mismatch, the first bad key.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "OFFICIAL_PREFIX", "strip_prefix", "read_state_dict", "read_torch_bytes",
           "save_checkpoint", "checkpoint_hash", "cache_dir", "local_copy"]

_WRAPPER_KEYS = ("state_dict", "model")

OFFICIAL_PREFIX = "module."  # nn.DataParallel(model).state_dict()


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model.

    The message names the file and the first bad key (and shapes where relevant).
    """


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = OFFICIAL_PREFIX) -> dict[str, Tensor]:
    """Remove `prefix` ("module.") from the keys that carry it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def cache_dir() -> Path:
    """Where remote checkpoints are cached: ``$SAMSR_CACHE_DIR/weights`` (default
    ``~/.cache/samsr/weights``)."""
    root = os.environ.get("SAMSR_CACHE_DIR")
    return Path(root) / "weights" if root else Path.home() / ".cache" / "samsr" / "weights"


def _is_local(uri: str) -> tuple[bool, str]:
    protocol, path = fsspec.core.split_protocol(str(uri))
    return protocol in (None, "file", "local"), path


def local_copy(uri: str, cache: str | Path | None = None, what: str = "checkpoint") -> Path:
    """A local path holding ``uri``: the file itself, or a cached copy of a remote one."""
    local, path = _is_local(uri)
    if local:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{what} {uri}: file not found")
        return p
    target_dir = Path(cache) if cache is not None else cache_dir()
    name = Path(path).name or "checkpoint.pth"
    target = target_dir / f"{hashlib.sha256(str(uri).encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fs, remote = fsspec.core.url_to_fs(str(uri))
        with fs.open(remote, "rb") as src, tempfile.NamedTemporaryFile(
            dir=target_dir, prefix=".part-", delete=False
        ) as dst:
            tmp = Path(dst.name)
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except FileNotFoundError as err:
        raise CheckpointError(f"{what} {uri}: file not found") from err
    except OSError as err:
        raise CheckpointError(f"{what} {uri}: cannot be opened ({type(err).__name__}: {err})") from err
    os.replace(tmp, target)
    return target


def _source(uri: str, cache: bool | str | Path, what: str) -> Path | bytes:
    """A local file to load (local paths, cached remote copies) or the remote file's bytes."""
    local, path = _is_local(uri)
    if local or cache is not False:
        return local_copy(uri, None if cache is True or cache is False else cache, what)
    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} {uri}: file not found") from exc
    except OSError as exc:
        raise CheckpointError(f"{what} {uri}: cannot be opened ({exc})") from exc


def _load(src: Path | bytes, uri: str, what: str) -> Any:
    """The one ``torch.load`` of samsr: gzip-compressed data accepted, ``map_location="cpu"``,
    ``weights_only=True`` (never pickled code); every failure a CheckpointError naming ``uri``."""
    if isinstance(src, Path):  # torch.load reads a file without a second copy in memory
        with open(src, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        data: Path | bytes = src.read_bytes() if gz else src
    else:
        data, gz = src, src[:2] == b"\x1f\x8b"
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{what} {uri}: truncated or corrupt gzip data ({exc})") from exc
    try:
        return torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu",
                          weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{what} {uri}: cannot be read, truncated or not a torch state dict "
            f"({type(exc).__name__}: {first})"
        ) from exc


def read_torch_bytes(data: bytes, uri: str, what: str = "checkpoint") -> Any:
    """A torch file's object (tensors, dicts, numbers: ``weights_only``) from bytes already read,
    e.g. a training checkpoint (``pipeline.train.checkpoint``); CheckpointError naming ``uri``."""
    return _load(data, uri, what)


def read_state_dict(uri: str, *, cache: bool | str | Path = False,
                    what: str = "checkpoint") -> dict[str, Tensor]:
    """Read a state dict (key -> tensor) from a path or fsspec URL (see the module docstring).

    Keys are returned as stored (:func:`strip_prefix` removes ``module.``). ``what`` starts
    every error message (e.g. "SAM checkpoint").
    """
    obj = _load(_source(str(uri), cache, what), uri, what)
    for wrapper in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{what} {uri}: expected a non-empty state dict, found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{what} {uri}: key {key!r} holds {type(value).__name__}, not a tensor")
    return obj


def save_checkpoint(model: nn.Module | dict[str, Tensor], uri: str, prefix: str = OFFICIAL_PREFIX) -> str:
    """Write `model`'s state dict (or a state dict, with or without the prefix) in the official
    format (keys prefixed "module.").

    Returns `uri`. Parent directories of local paths are created.
    """
    given = model.state_dict() if isinstance(model, nn.Module) else strip_prefix(model, prefix)
    state = {prefix + k: v.detach().cpu() for k, v in given.items()}
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
