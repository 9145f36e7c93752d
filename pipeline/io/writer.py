"""Refined mask outputs at deterministic URIs under the output prefix.

Layout under ``output_prefix``:
  ``masks/<safe_key>.png``  binary mask, 8-bit grey PNG in {0, 255}
  ``soft/<safe_key>.png``   optional soft mask, 8-bit grey PNG in 0..255 (round(p * 255))
The same key and mask always give the same URI and the same bytes, so a retried task just
overwrites (idempotent). Writes are atomic per file (see :func:`pipeline.io.fs.write_bytes`).
"""

from __future__ import annotations

import cv2
import numpy as np

from .fs import join_uri, write_bytes
from .keys import safe_key

__all__ = ["write_mask", "write_masks", "mask_uri", "encode_png", "to_binary_u8", "to_soft_u8"]

_KINDS = ("masks", "soft", "candidates")


def mask_uri(output_prefix: str, key: str, kind: str = "masks") -> str:
    """``<output_prefix>/<kind>/<safe_key(key)>.png`` (kind ``masks``, ``soft`` or ``candidates``:
    a refined mask the trust policy turned down)."""
    if kind not in _KINDS:
        raise ValueError(f"mask_uri: kind must be one of {_KINDS}, got {kind!r}")
    return join_uri(output_prefix, kind, f"{safe_key(key)}.png")


def to_binary_u8(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> uint8 in {0, 255}, with DESIGN §3's rule.

    bool: True -> 255; uint8: ``> 128``; float probabilities in [0, 1]: ``p * 255 > 128``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.dtype == bool:
        fg = mask
    elif mask.dtype == np.uint8:
        fg = mask > 128
    elif np.issubdtype(mask.dtype, np.floating):
        return _by_rows(mask, lambda m: (m * 255.0 > 128).astype(np.uint8) * 255)
    else:
        raise ValueError(f"mask dtype must be bool, uint8 or float, got {mask.dtype}")
    return fg.astype(np.uint8) * 255


_CHUNK_ROWS = 256  # rows of a float mask converted at a time (whole-image float temporaries: 12 B/px)


def _by_rows(mask: np.ndarray, fn) -> np.ndarray:
    """(H, W) uint8: the elementwise ``fn`` (float rows -> uint8 rows) applied in row chunks."""
    out = np.empty(mask.shape, np.uint8)
    for r0 in range(0, mask.shape[0], _CHUNK_ROWS):
        out[r0 : r0 + _CHUNK_ROWS] = fn(mask[r0 : r0 + _CHUNK_ROWS])
    return out


def to_soft_u8(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> uint8 0..255: float p in [0, 1] -> round(p * 255); uint8 as is; bool 0/255."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype == bool:
        return mask.astype(np.uint8) * 255
    if np.issubdtype(mask.dtype, np.floating):
        return _by_rows(mask, lambda m: np.clip(np.rint(np.nan_to_num(m) * 255.0), 0, 255).astype(np.uint8))
    raise ValueError(f"mask dtype must be bool, uint8 or float, got {mask.dtype}")


def encode_png(mask: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (deterministic for equal input)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8))
    if not ok:
        raise ValueError(f"PNG encoding failed for mask of shape {mask.shape}")
    return buf.tobytes()


def write_mask(output_prefix: str, key: str, mask: np.ndarray, *, soft: bool = False) -> str:
    """Write the binary mask of ``key``; returns its URI ``<prefix>/masks/<safe_key>.png``.

    mask: (H, W) bool, uint8 0..255 or float probabilities in [0, 1] (binarised with
    :func:`to_binary_u8`). soft=True also writes :func:`to_soft_u8` to
    ``<prefix>/soft/<safe_key>.png`` (URI from ``mask_uri(prefix, key, "soft")``).
    Raises SampleError("bad_key") for keys :func:`safe_key` rejects.
    """
    return write_masks(output_prefix, key, to_binary_u8(mask), to_soft_u8(mask) if soft else None)[0]


def write_masks(output_prefix: str, key: str, binary: np.ndarray,
                soft: np.ndarray | None = None) -> tuple[str, str | None]:
    """The one place masks are written: ``binary`` (H, W) uint8 {0, 255} to
    ``<prefix>/masks/<safe_key>.png`` and, if given, ``soft`` (H, W) uint8 (round(p * 255)) to
    ``<prefix>/soft/<safe_key>.png``. Returns (mask URI, soft URI or None). The soft mask is
    written first, so an existing binary mask means both are complete."""
    uri = mask_uri(output_prefix, key)
    soft_uri = None
    if soft is not None:
        soft_uri = write_bytes(mask_uri(output_prefix, key, "soft"), encode_png(soft))
    write_bytes(uri, encode_png(binary))
    return uri, soft_uri
