"""Re-labeling semantic label maps: each class present is refined as a binary mask at full
resolution inside a crop window, and the refined classes are merged back into one label map of
the image's full size. Pure computation (bytes in, bytes out; no Ray, no storage).

Reading (``read_label_map``):
  - any Pillow format; the first frame of a multi-frame file (the frame ``Image.open`` is on);
    EXIF orientation is NOT applied (label PNGs carry none; the map is used as stored);
  - accepted modes and the dtype of ``values``: ``L`` -> uint8; ``1`` -> uint8 0/1, recorded as
    mode ``L``; ``P`` -> uint8 palette INDICES (never converted to colours), palette and
    transparency kept; ``I;16`` (and ``I;16L``/``I;16B``/``I;16N``) -> uint16, recorded as
    ``I;16``; ``I`` -> int32;
  - every other mode (RGB, RGBA, LA, PA, CMYK, YCbCr, F, ...) is not a class-id map:
    ``SampleError(key, "label_map_mode", ...)`` (checked from the header, nothing decoded);
  - guards as in :mod:`pipeline.io.decode`: the header's pixel count over ``max_pixels`` (or
    over Pillow's own bomb limit) -> ``too_large`` before any pixel is decoded; empty, corrupt,
    truncated or non-image bytes, zero-size images -> ``decode_error``.

Writing (``write_label_map``): PNG in the source's mode -- 8-bit grey for ``L``, 8-bit palette
for ``P`` (same palette and transparency; the palette is padded with black entries only if a
value has no palette entry, since Pillow would otherwise pack the indices into fewer bits), 16-bit
grey for ``I;16``. PNG has no 32-bit grey, so ``I`` maps are written as 16-bit grey too (values
0..65535) and read back as ``I;16``. Values outside the mode's range -> ``ValueError``.

Geometry, with a label map ``values`` of (h, w) and an image of (height, width) = (H, W):
  - coarse masks: the coarse mask of class c is ``(values == c) * 255`` upsampled bilinearly
    with half-pixel centres (:func:`pipeline.relabel.crops.upsample_window`, i.e.
    ``cv2.resize(..., (W, H), INTER_LINEAR)``), uint8 0..255;
  - ``class_box``: the low-res box of class c scaled to full resolution (floor / ceil), grown by
    one source-pixel step ``(ceil(W / w), ceil(H / h))`` on each side and clipped to the image,
    so it contains every pixel where that upsampled coarse mask can be > 0 (destination pixel
    X samples ``x = (X + 0.5) * w / W - 0.5``, which is non-zero only if ``bx0 - 1 < x < bx1``);
  - ``upsample_labels`` (the base label map): nearest neighbour with half-pixel centres, exact
    integer arithmetic: row ``Y`` takes source row ``floor((Y + 0.5) * h / H)`` =
    ``((2 * Y + 1) * h) // (2 * H)``, columns alike. That is the source pixel nearest to the
    bilinear sampling point (the corner with the largest bilinear weight); an exact tie (the
    point halfway between two source pixels) takes the later pixel. For integer scale factors
    this is plain pixel replication (= ``cv2.INTER_NEAREST``); otherwise it equals
    ``cv2.INTER_NEAREST_EXACT`` / PIL ``NEAREST`` except at exact ties, where their float
    arithmetic may pick the earlier pixel. ``cv2.INTER_NEAREST`` (``floor(Y * h / H)``, top-left
    corners) is not used: it shifts the map by up to half a source pixel against the bilinear
    coarse masks.

Merging (``LabelMerger``), per full-resolution pixel:
  1. a pixel whose base (upsampled) label is ``ignore`` stays ``ignore`` (``ignore`` is never
     refined);
  2. otherwise each refined class whose probability there is >= 0.5 "claims" it (outside a
     class's window its probability is 0); the highest probability wins, a tie goes to the class
     added first (``relabel_classes`` adds classes in increasing id order);
  3. a pixel no class claims keeps its base label.
Memory is O(H * W): the best probability so far (float32) and the winning label (base dtype);
probabilities are compared as float32.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..io.decode import DEFAULT_MAX_PIXELS, open_checked
from ..io.keys import SampleError
from ..refine.trust import split_outcome
from .crops import CropRule, box_of, crop_box, upsample_window

__all__ = [
    "LabelMap",
    "read_label_map",
    "write_label_map",
    "classes_present",
    "class_box",
    "class_coarse",
    "upsample_labels",
    "LabelMerger",
    "relabel_classes",
    "LABEL_MODES",
    "DEFAULT_MAX_PIXELS",
    "CLAIM_THRESHOLD",
]

#: A refined probability >= this claims the pixel for its class.
CLAIM_THRESHOLD = 0.5

#: Modes of a LabelMap (a ``1`` source is recorded as ``L``).
LABEL_MODES: tuple[str, ...] = ("L", "P", "I;16", "I")

_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")
_READABLE = ("1", "L", "P", "I") + _SIXTEEN
_RANGE = {"L": (0, 255), "P": (0, 255), "I;16": (0, 65535), "I": (0, 65535)}

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class LabelMap:
    """A decoded label map.

    values: (h, w) class ids -- uint8 for ``L`` (and ``1`` sources, as 0/1) and ``P`` (palette
    indices), uint16 for ``I;16``, int32 for ``I``; mode: one of :data:`LABEL_MODES`; palette:
    for ``P`` the raw RGB palette (``getpalette(rawmode="RGB")`` as bytes, 3 bytes an entry),
    else None; transparency: ``info["transparency"]`` of the source (an int, or for ``P`` per-entry
    alpha bytes), written back by :func:`write_label_map`.
    """

    values: np.ndarray
    mode: str
    palette: bytes | None
    transparency: object = None


def _open(data: bytes, key: str, max_pixels: int) -> Image.Image:
    what = "label map"
    im = open_checked(data, key, what, max_pixels)  # header guards, nothing decoded yet
    if im.mode not in _READABLE:
        raise SampleError(
            key,
            "label_map_mode",
            f"{what} is mode {im.mode}: label maps must be single-channel class ids "
            f"(L, P, I;16, I; 1-bit is read as L 0/1); colour and float maps are not class ids",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im.load()
        except Exception as exc:
            raise SampleError(key, "decode_error", f"{what}: truncated or corrupt ({exc})") from exc
    return im


def read_label_map(data: bytes, key: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LabelMap:
    """Encoded label-map bytes -> :class:`LabelMap` (rules in the module docstring); raises
    ``SampleError(key, "label_map_mode" | "too_large" | "decode_error", ...)``."""
    im = _open(data, key, max_pixels)
    mode = im.mode
    transparency = im.info.get("transparency")
    palette = None
    try:
        raw = np.asarray(im)
        if mode in ("1", "L"):
            values, mode = raw.astype(np.uint8), "L"
        elif mode == "P":
            values = raw.astype(np.uint8)
            pal = im.getpalette(rawmode="RGB")
            palette = bytes(pal) if pal is not None else b""
        elif mode in _SIXTEEN:
            values, mode = raw.astype(np.uint16), "I;16"
        else:  # "I"
            values = raw.astype(np.int32)
    except Exception as exc:
        message = f"label map: unsupported pixel data in mode {mode!r} ({exc})"
        raise SampleError(key, "decode_error", message) from exc
    if values.ndim != 2:
        raise SampleError(key, "decode_error", f"label map: expected one channel, got shape {values.shape}")
    return LabelMap(np.ascontiguousarray(values), mode, palette, transparency)


def write_label_map(label: LabelMap, values: np.ndarray) -> bytes:
    """PNG bytes of ``values`` (H, W) (integer or bool) in ``label``'s mode, with its palette and
    transparency; ``ValueError`` if a value is outside the mode's range (0..255 for ``L``/``P``,
    0..65535 for ``I;16``/``I``) or the array is not a non-empty 2-D integer array."""
    if label.mode not in _RANGE:
        raise ValueError(f"write_label_map: mode {label.mode!r} is not one of {LABEL_MODES}")
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"write_label_map: values must be a non-empty (H, W) array, got {values.shape}")
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_):
        raise ValueError(f"write_label_map: values must be integer class ids, got dtype {values.dtype}")
    lo, hi = _RANGE[label.mode]
    vmin, vmax = int(values.min()), int(values.max())
    if vmin < lo or vmax > hi:
        raise ValueError(
            f"write_label_map: values {vmin}..{vmax} do not fit mode {label.mode!r} (range {lo}..{hi})"
        )
    kwargs: dict = {}
    if label.mode in ("L", "P"):
        im = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8))
        if label.mode == "P":
            if label.palette is None:
                palette = bytes(v for v in range(256) for _ in range(3))
            else:
                palette = bytes(label.palette)
                palette += b"\x00" * (-len(palette) % 3)
            entries = max(len(palette) // 3, vmax + 1)
            palette += b"\x00" * (3 * entries - len(palette))  # an index past the palette gets black
            im.putpalette(palette, "RGB")
    else:
        im = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16))
    t = label.transparency
    if t is not None and (isinstance(t, int) or (label.mode == "P" and isinstance(t, bytes | bytearray))):
        kwargs["transparency"] = t
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def classes_present(values: np.ndarray, ignore: int | None) -> list[int]:
    """Sorted distinct class ids of ``values`` (any integer array), without ``ignore``; every
    other value (0 / background included) is a class."""
    return [int(v) for v in np.unique(values) if ignore is None or int(v) != ignore]


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def class_box(values: np.ndarray, cls: int, height: int, width: int) -> Box | None:
    """Full-resolution box ``(x0, y0, x1, y1)`` (exclusive ends, inside the (height, width)
    image) containing every pixel where the bilinearly upsampled mask of ``values == cls``
    ((h, w) label map) can be > 0; None if ``cls`` is absent. Exact integer arithmetic."""
    h, w = values.shape[:2]
    box = box_of(values == cls)
    if box is None:
        return None
    bx0, by0, bx1, by1 = box
    gx, gy = _ceil_div(width, w), _ceil_div(height, h)
    x0 = max(0, (bx0 * width) // w - gx)
    y0 = max(0, (by0 * height) // h - gy)
    x1 = min(width, _ceil_div(bx1 * width, w) + gx)
    y1 = min(height, _ceil_div(by1 * height, h) + gy)
    return x0, y0, x1, y1


def class_coarse(values: np.ndarray, cls: int, height: int, width: int, window: Box) -> np.ndarray:
    """Coarse mask of class ``cls`` inside ``window`` = ``(x0, y0, x1, y1)`` at full resolution:
    ``(values == cls) * 255`` ((h, w) label map) upsampled bilinearly (half-pixel centres) to
    (height, width) and cut to the window, without building the full-size array.
    Returns (y1 - y0, x1 - x0) uint8 in 0..255."""
    low = ((values == cls) * 255).astype(np.uint8)
    return upsample_window(low, height, width, tuple(int(v) for v in window))


def upsample_labels(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) label map -> (height, width), same dtype, nearest neighbour with half-pixel
    centres by exact integer index arrays (source row ``((2 * Y + 1) * h) // (2 * H)``;
    convention in the module docstring). Works for every dtype (uint8, uint16, int32, ...)."""
    h, w = values.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"upsample_labels: empty target size {height}x{width}")
    if (h, w) == (height, width):
        return values.copy()
    rows = ((2 * np.arange(height, dtype=np.int64) + 1) * h) // (2 * height)
    cols = ((2 * np.arange(width, dtype=np.int64) + 1) * w) // (2 * width)
    return np.ascontiguousarray(values[rows[:, None], cols[None, :]])


class LabelMerger:
    """Merges per-class refined probabilities into one full-resolution label map, memory
    O(H * W) (not O(classes * H * W)). Rules in the module docstring.

    base: (H, W) integer upsampled label map (:func:`upsample_labels` output; copied, not
    modified); ignore: the ignore id or None. Keeps the best probability so far per pixel
    (float32) and the winning label (base's dtype).
    """

    def __init__(self, base: np.ndarray, ignore: int | None) -> None:
        base = np.asarray(base)
        if base.ndim != 2 or not np.issubdtype(base.dtype, np.integer):
            raise ValueError(f"LabelMerger: base must be a 2-D integer array, got {base.dtype} {base.shape}")
        self.ignore = ignore
        self._labels = base.copy()
        self._best = np.zeros(base.shape, dtype=np.float32)
        self._info = np.iinfo(base.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return self._labels.shape

    def add(self, cls: int, window: Box, prob: np.ndarray) -> None:
        """Add class ``cls``'s refined probability ``prob`` ((y1 - y0, x1 - x0), in [0, 1],
        compared as float32; NaN claims nothing) inside ``window`` = ``(x0, y0, x1, y1)``."""
        cls = int(cls)
        if self.ignore is not None and cls == self.ignore:
            raise ValueError(f"LabelMerger.add: class {cls} is the ignore id")
        if not (self._info.min <= cls <= self._info.max):
            raise ValueError(f"LabelMerger.add: class {cls} does not fit the base dtype {self._labels.dtype}")
        H, W = self._labels.shape
        x0, y0, x1, y1 = (int(v) for v in window)
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise ValueError(f"LabelMerger.add: window {window} is empty or outside the {W}x{H} image")
        p = np.asarray(prob, dtype=np.float32)
        if p.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"LabelMerger.add: prob shape {p.shape} != window shape {(y1 - y0, x1 - x0)}")
        best = self._best[y0:y1, x0:x1]
        labels = self._labels[y0:y1, x0:x1]
        # in place, one window-sized bool and one temporary (a whole-image window at 192 MP: the
        # background class of a label map)
        take = p >= CLAIM_THRESHOLD
        take &= p > best  # strict: a tie keeps the class added first
        if self.ignore is not None:
            take &= labels != self.ignore  # labels are ignore exactly where base is (never added)
        np.copyto(best, p, where=take)
        labels[take] = cls

    def result(self) -> np.ndarray:
        """(H, W) merged label map, dtype of base (a copy)."""
        return self._labels.copy()


def relabel_classes(
    values: np.ndarray,
    ignore: int | None,
    height: int,
    width: int,
    refine_fn: Callable[[int, Box, np.ndarray], np.ndarray],
    rule: CropRule = CropRule(),
) -> tuple[np.ndarray, list[dict]]:
    """Re-label a (h, w) label map at (height, width).

    For each class of ``classes_present(values, ignore)`` in increasing order: box =
    :func:`class_box`, window = ``crop_box(box, height, width, rule)``, coarse =
    :func:`class_coarse` ((wh, ww) uint8), prob = ``refine_fn(cls, window, coarse)`` ((wh, ww) in
    [0, 1]), merged by :class:`LabelMerger` over the :func:`upsample_labels` base. One class at a
    time, so memory beyond O(H * W) is one window; an exception from ``refine_fn`` propagates.

    Returns (merged (height, width) labels of ``values``'s dtype, one record per class:
    ``{"class", "window", "coarse_pixels": #coarse > 128, "refined_pixels": #prob >= 0.5}``
    (pixels the class claims, before the merge decides between claims)).
    """
    values = np.asarray(values)
    merger = LabelMerger(upsample_labels(values, height, width), ignore)
    records: list[dict] = []
    for cls in classes_present(values, ignore):
        box = class_box(values, cls, height, width)
        if box is None:  # cannot happen for a present class; kept for safety
            continue
        window = crop_box(box, height, width, rule)
        coarse = class_coarse(values, cls, height, width, window)
        prob, info = split_outcome(refine_fn(cls, window, coarse))[:2]  # the candidate is not kept
        prob = np.asarray(prob, dtype=np.float32)
        merger.add(cls, window, prob)
        records.append({
            "class": cls,
            "window": tuple(int(v) for v in window),
            "coarse_pixels": int(np.count_nonzero(coarse > 128)),
            "refined_pixels": int(np.count_nonzero(prob >= CLAIM_THRESHOLD)),
            **info,
        })
        del coarse, prob  # before the next class's window
    return merger.result(), records
