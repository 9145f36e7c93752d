"""Decoding with guards: bytes -> normalised arrays, or a SampleError naming the sample.

Images -> (H, W, 3) uint8 RGB:
  - EXIF orientation is applied (``ImageOps.exif_transpose``), so (H, W) is the upright size;
  - grey, palette, CMYK, YCbCr -> RGB by Pillow's conversion; RGBA/LA/PA: alpha is dropped;
  - 16-bit grey (``I;16*``/``I``) -> ``value >> 8``, replicated to 3 channels; 16-bit RGB PNGs
    are read by Pillow as their high bytes; float (``F``) -> ``value * 255`` when all values
    are within [0, 1], else clipped to [0, 255]; multi-frame files use the first frame.
Masks (coarse and gt) -> (h, w) uint8 in 0..255 (EXIF orientation applied too):
  - 8-bit grey as is; 1-bit -> {0, 255};
  - label maps whose values are only {0, 1} (any bit depth) -> {0, 255};
  - 16-bit -> ``value >> 8``; float as for images;
  - RGB, CMYK and palette masks -> their colours (palette looked up); if every pixel is grey
    (R == G == B) that grey value is the mask (soft values kept), otherwise it is a coloured
    label map: a pixel whose brightest channel is >= 32 is foreground (255), else 0 (so
    VOC-style colours, void included, are foreground and JPEG noise on black is not);
  - RGBA/LA/PA: if the colour channels are one constant value and alpha varies, alpha is the
    mask (cut-out style); otherwise alpha is ignored and the colour rule applies.
Guards:
  - ``max_pixels`` (default 192 MP: 16000x12000) is checked from the header, BEFORE pixel data is decoded:
    a decompression-bomb PNG is ``too_large``, not an out-of-memory kill. Pillow's own bomb
    limit (2 x ``Image.MAX_IMAGE_PIXELS``, ~179 MP by default) would refuse a 16000x12000 image
    that ``max_pixels`` admits, so it is raised (never lowered) to ``max_pixels`` before a header
    is read: ``max_pixels`` is the guard; Pillow's (then 2 x max_pixels) also maps to ``too_large``.
  - truncated/corrupt/non-image bytes, zero-size images -> ``decode_error``;
  - coarse mask aspect ratio: with image (H, W) and mask (h, w), the mask height expected from
    its width is ``w * H / W``; a difference above ``max(1 px, aspect_tolerance * expected)``
    (default 2%) is ``aspect_mismatch``. Smaller or larger masks of the same aspect are fine:
    they are resized to (H, W), bilinearly (``cv2.INTER_LINEAR``) when upsampling and with
    ``cv2.INTER_AREA`` when downsampling. ``coarse_size`` keeps the original (h, w).
  - ground truth must be exactly (H, W) after EXIF orientation, else ``gt_size_mismatch``.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from .fs import read_bytes
from .keys import SampleError, safe_key
from .layouts import SampleRef

__all__ = [
    "Sample",
    "load_sample",
    "load_image_gt",
    "decode_image",
    "decode_mask",
    "open_checked",
    "allow_pixels",
    "resize_mask",
    "DEFAULT_MAX_PIXELS",
    "ASPECT_TOLERANCE",
]

DEFAULT_MAX_PIXELS = 192_000_000  # 16000x12000: measured through the pipeline (issue 32); = input.max_pixels
ASPECT_TOLERANCE = 0.02

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class Sample:
    """A decoded sample.

    image: (H, W, 3) uint8 RGB, upright; coarse: (H, W) uint8 in 0..255, already resized to the
    image; coarse_size: (h, w) of the mask as stored; gt: (H, W) uint8 in 0..255 or None;
    ref: where it came from.
    """

    key: str
    image: np.ndarray
    coarse: np.ndarray
    coarse_size: tuple[int, int]
    gt: np.ndarray | None = None
    ref: SampleRef | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``: a warning above it, an
    error above twice it) to ``max_pixels`` where it is lower; never lowers it (other callers in
    the process may have asked for more). Our own header check against ``max_pixels`` stays the
    guard."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def open_checked(data: bytes, key: str, what: str, max_pixels: int) -> Image.Image:
    """Open ``data`` and check its header (empty, unreadable, zero-size, over ``max_pixels``)
    BEFORE any pixel is decoded; SampleError(key, ...) names ``what``. Not loaded yet."""
    if not data:
        raise SampleError(key, "decode_error", f"{what}: empty file (0 bytes)")
    allow_pixels(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # header over 2x Pillow's own limit
            size = re.search(r"\((\d+) pixels\)", str(exc))
            count = f"{size.group(1)} pixels" if size else "far more pixels"
            message = f"{what}: header declares {count}, over max_pixels={max_pixels} (input.max_pixels)"
            raise SampleError(key, "too_large", message + "; not decoded") from exc
        except Image.UnidentifiedImageError as exc:
            raise SampleError(key, "decode_error", f"{what}: not a readable image "
                              f"({len(data)} bytes in no image format Pillow knows)") from exc
        except Exception as exc:  # Pillow raises many types on junk bytes
            raise SampleError(key, "decode_error", f"{what}: not a readable image ({exc})") from exc
        w, h = im.size
        if w <= 0 or h <= 0:
            raise SampleError(key, "decode_error", f"{what}: zero-size image {w}x{h}")
        if w * h > max_pixels:
            raise SampleError(
                key, "too_large", f"{what}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
            )
    return im


def _open(data: bytes, key: str, what: str, max_pixels: int) -> Image.Image:
    """Open, check the header size against max_pixels, then decode and apply EXIF."""
    im = open_checked(data, key, what, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im.load()
        except Exception as exc:
            raise SampleError(key, "decode_error", f"{what}: truncated or corrupt ({exc})") from exc
        try:
            ImageOps.exif_transpose(im, in_place=True)  # no copy when upright already
            return im
        except Exception as exc:
            raise SampleError(key, "decode_error", f"{what}: bad EXIF orientation ({exc})") from exc


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0)
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _sixteen_to_u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def decode_image(
    data: bytes, *, key: str = "?", max_pixels: int = DEFAULT_MAX_PIXELS, source: str | None = None
) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB (rules in the module docstring); ``source``
    (the URI) is named in errors."""
    im = _open(data, key, f"image {source!r}" if source else "image", max_pixels)
    try:
        if im.mode == "RGB":
            return _rgb_array(im)
        elif im.mode in _SIXTEEN_BIT or im.mode == "F":
            a = np.asarray(im)
            grey = _float_to_u8(a) if im.mode == "F" else _sixteen_to_u8(a)
            arr = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            arr = np.asarray(im.convert("RGBA").convert("RGB") if "A" in im.mode else im.convert("RGB"))
    except Exception as exc:
        message = f"image{f' {source!r}' if source else ''}: unsupported pixel format {im.mode!r} ({exc})"
        raise SampleError(key, "decode_error", message) from exc
    return np.ascontiguousarray(arr, dtype=np.uint8)


_STRIP_BYTES = 1 << 24  # bytes of RGB rows converted at a time


def _rgb_array(im: Image.Image) -> np.ndarray:
    """A decoded RGB image -> (H, W, 3) uint8, in row strips: ``np.asarray`` of the whole image
    holds Pillow's 4-byte-per-pixel buffer, a 3-byte copy of it and the array at once (10 B/px);
    strips peak at 7 B/px."""
    w, h = im.size
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, _STRIP_BYTES // (3 * w))
    for r0 in range(0, h, step):
        out[r0 : r0 + step] = np.asarray(im.crop((0, r0, w, min(h, r0 + step))))
    return out


COLOUR_FOREGROUND_MIN = 32


def _colour_to_grey(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) uint8: grey stays grey; colours are a label map."""
    if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
        return rgb[:, :, 0]
    return np.where(rgb.max(axis=2) >= COLOUR_FOREGROUND_MIN, 255, 0).astype(np.uint8)


def decode_mask(
    data: bytes,
    *,
    key: str = "?",
    what: str = "mask",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str | None = None,
) -> np.ndarray:
    """Encoded mask bytes -> (h, w) uint8 in 0..255 (rules in the module docstring); ``source``
    (the URI) is named in errors."""
    what = f"{what} {source!r}" if source else what
    im = _open(data, key, what, max_pixels)
    mode = im.mode
    try:
        if mode == "1":
            return np.ascontiguousarray(np.asarray(im.convert("L")), dtype=np.uint8)
        if mode in ("L",) + _SIXTEEN_BIT:
            raw = np.asarray(im)
            if raw.size and raw.max() == 1 and raw.min() >= 0:
                out = raw.astype(np.uint8) * 255
            else:
                out = raw.astype(np.uint8) if mode == "L" else _sixteen_to_u8(raw)
        elif mode == "F":
            out = _float_to_u8(np.asarray(im))
        elif mode in ("LA", "RGBA", "PA", "La", "RGBa"):
            rgba = np.asarray(im.convert("RGBA"))
            colour, alpha = rgba[:, :, :3], rgba[:, :, 3]
            if colour.min() == colour.max() and alpha.min() != alpha.max():
                out = alpha
            else:
                out = _colour_to_grey(colour)
        else:  # RGB, P, CMYK, YCbCr, ...
            out = _colour_to_grey(np.asarray(im.convert("RGB")))
    except Exception as exc:
        raise SampleError(key, "decode_error", f"{what}: unsupported pixel format {mode!r} ({exc})") from exc
    if out.size and out.max() == 1:
        out = out * 255
    return np.ascontiguousarray(out, dtype=np.uint8)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) uint8 -> (height, width) uint8: INTER_LINEAR up, INTER_AREA down, copy if equal."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    interp = cv2.INTER_AREA if h * w > height * width else cv2.INTER_LINEAR
    return cv2.resize(mask, (width, height), interpolation=interp)


def _read(ref: SampleRef, role: str) -> bytes:
    missing = {"image": "missing_image", "mask": "missing_mask", "gt": "missing_gt"}[role]
    uri, offset, length = ref.source(role)
    if uri is None:
        raise SampleError(ref.key, missing, f"no {role} for this sample")
    try:
        data = read_bytes(uri, offset, length)
    except FileNotFoundError as exc:
        raise SampleError(ref.key, missing, f"{role} {getattr(ref, role + '_uri')!r} does not exist") from exc
    except Exception as exc:
        raise SampleError(ref.key, "read_error", f"reading {role} {uri!r} failed: {exc!r}") from exc
    if length is not None and len(data) != length:
        raise SampleError(
            ref.key, "decode_error", f"{role} {getattr(ref, role + '_uri')!r}: {len(data)} of {length} bytes"
        )
    return data


def load_sample(
    ref: SampleRef,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    aspect_tolerance: float = ASPECT_TOLERANCE,
    load_gt: bool = True,
) -> Sample:
    """Read and decode one sample; raises SampleError(key, error_type, message) on bad input.

    Problems found while listing (``ref.problem``) are raised first; then the key is checked
    (``bad_key``), the image and mask are read (ranged reads for tar members) and decoded with
    the guards of this module. ``load_gt=False`` skips the ground truth.
    """
    key = ref.key
    safe_key(key)
    if ref.problem:
        raise SampleError(key, ref.problem, ref.problem_message or ref.problem)
    image = decode_image(_read(ref, "image"), key=key, max_pixels=max_pixels, source=ref.image_uri)
    H, W = image.shape[:2]
    raw = decode_mask(_read(ref, "mask"), key=key, what="mask", max_pixels=max_pixels, source=ref.mask_uri)
    h, w = raw.shape
    expected_h = w * H / W
    if abs(h - expected_h) > max(1.0, aspect_tolerance * expected_h):
        raise SampleError(
            key,
            "aspect_mismatch",
            f"mask {ref.mask_uri!r} {w}x{h} vs image {ref.image_uri!r} {W}x{H}: aspect {w / h:.4f} vs "
            f"{W / H:.4f} (tolerance {aspect_tolerance:.0%})",
        )
    coarse = resize_mask(raw, H, W)
    gt = None
    if load_gt and ref.gt_uri is not None:
        gt = decode_mask(_read(ref, "gt"), key=key, what="gt", max_pixels=max_pixels, source=ref.gt_uri)
        if gt.shape != (H, W):
            raise SampleError(
                key, "gt_size_mismatch", f"gt {gt.shape[1]}x{gt.shape[0]} differs from image {W}x{H}"
            )
    return Sample(key=key, image=image, coarse=coarse, coarse_size=(h, w), gt=gt, ref=ref)


def load_image_gt(ref: SampleRef, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 RGB and ground truth (H, W) uint8 of a sample, for training: a
    coarse mask is neither needed nor read. Raises SampleError like :func:`load_sample`
    (``missing_gt`` when the sample has none, ``gt_size_mismatch`` when it differs from the image)."""
    key = ref.key
    safe_key(key)
    if ref.problem and ref.problem != "missing_mask":
        raise SampleError(key, ref.problem, ref.problem_message or ref.problem)
    if ref.gt_uri is None:
        raise SampleError(key, "missing_gt", "no ground truth for this sample")
    image = decode_image(_read(ref, "image"), key=key, max_pixels=max_pixels, source=ref.image_uri)
    gt = decode_mask(_read(ref, "gt"), key=key, what="gt", max_pixels=max_pixels, source=ref.gt_uri)
    if gt.shape != image.shape[:2]:
        h, w = image.shape[:2]
        gh, gw = gt.shape
        raise SampleError(key, "gt_size_mismatch", f"gt {gw}x{gh} differs from image {w}x{h}")
    return image, gt
