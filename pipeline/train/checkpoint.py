"""Training checkpoints on any fsspec URL, written so that a kill at any moment leaves a usable state.

Layout under the checkpoint directory URI:
- ``ckpt-00001234.pt``: ``torch.save`` of {"step", "model", "optimizer", "scheduler", "log",
  "config"}; ``model`` is the unwrapped model's state dict (official key naming, no ``module.``).
- ``latest``: the file name of the newest complete checkpoint, written AFTER that file
  (commit marker last), so a reader never sees a half-written checkpoint.
- ``log.jsonl``: the loss log so far (one JSON object per logged step), rewritten on save.
Older checkpoints beyond ``keep`` are deleted after the marker moves.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import torch

from pipeline.io.fs import open_fs
from pipeline.io.weights import read_torch_bytes

__all__ = ["save_train_state", "load_latest", "list_checkpoints"]

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def _join(fs: Any, root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def list_checkpoints(dir_uri: str) -> list[tuple[int, str]]:
    """[(step, file name)] of checkpoint files present, oldest first (empty if none / no dir)."""
    fs, root = open_fs(dir_uri)
    if not fs.exists(root):
        return []
    out = []
    for p in fs.ls(root, detail=False):
        m = _NAME.match(p.rstrip("/").rsplit("/", 1)[-1])
        if m:
            out.append((int(m.group(1)), m.group(0)))
    return sorted(out)


def save_train_state(dir_uri: str, state: dict[str, Any], keep: int = 3) -> str:
    """Write ``state`` (must hold an int "step") as a checkpoint, then move ``latest`` to it.

    Returns the checkpoint's URI-relative file name.
    """
    step = state.get("step")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"save_train_state({dir_uri}): state needs a non-negative int 'step', got {step!r}")
    fs, root = open_fs(dir_uri)
    fs.makedirs(root, exist_ok=True)
    name = f"ckpt-{step:08d}.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.pipe_file(_join(fs, root, name), buf.getvalue())
    log = state.get("log") or []
    fs.pipe_file(_join(fs, root, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in log).encode())
    fs.pipe_file(_join(fs, root, "latest"), name.encode())
    for _, old in list_checkpoints(dir_uri)[:-keep] if keep > 0 else []:
        if old != name:
            fs.rm(_join(fs, root, old))
    return name


def load_latest(dir_uri: str) -> dict[str, Any] | None:
    """The newest complete checkpoint's state, or None when the directory has none.

    Follows ``latest``; if the marker is missing (e.g. killed between files) falls back to the
    newest ``ckpt-*.pt`` that loads (``pipeline.io.weights.read_torch_bytes``: CPU, weights only).
    """
    fs, root = open_fs(dir_uri)
    candidates: list[str] = []
    marker = _join(fs, root, "latest")
    if fs.exists(marker):
        candidates.append(fs.cat_file(marker).decode().strip())
    candidates += [n for _, n in reversed(list_checkpoints(dir_uri)) if n not in candidates]
    for name in candidates:
        path = _join(fs, root, name)
        if not fs.exists(path):
            continue
        try:
            return read_torch_bytes(fs.cat_file(path), path, "training checkpoint")
        except Exception as exc:  # a truncated file from a kill: try the next older one
            print(f"[train] skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}", flush=True)
    return None
