"""Overlays for the report: an image thumbnail with the coarse, refined and ground-truth contours,
and a zoomed crop of the largest disagreement.

Memory stays bounded for 6k images: JPEGs are decoded at a reduced scale (Pillow's ``draft``)
for the thumbnail, masks are decoded once and reduced right away, and the zoom decodes only
the image it crops.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = ["COLOURS", "Overlay", "read_any", "make_overlay"]

#: contour colours (RGB): coarse orange, refined cyan, ground truth magenta
COLOURS = {"coarse": (255, 140, 0), "refined": (0, 200, 255), "gt": (255, 0, 255)}


@lru_cache(maxsize=8)
def _members(shard: str) -> dict[str, tuple[int, int]]:
    from pipeline.io import iter_tar_members

    return {name: (offset, size) for name, offset, size in iter_tar_members(shard)}


def read_any(uri: str) -> bytes:
    """Bytes of a manifest URI: a plain object, or ``<shard.tar>#<member>``."""
    from pipeline.io import read_bytes

    if "#" in uri and uri.split("#", 1)[0].endswith(".tar"):
        shard, name = uri.split("#", 1)
        offset, size = _members(shard)[name]
        return read_bytes(shard, offset, size)
    return read_bytes(uri)


def _open_image(data: bytes, reduce_to: int | None) -> Image.Image:
    from pipeline.io.decode import DEFAULT_MAX_PIXELS, allow_pixels

    allow_pixels(DEFAULT_MAX_PIXELS)  # an input the job took (16000x12000 is over Pillow's own limit)
    im = Image.open(io.BytesIO(data))
    if reduce_to:
        im.draft("RGB", (reduce_to, reduce_to))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
    im = ImageOps.exif_transpose(im)
    return im.convert("RGB")


def _mask(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """A mask PNG -> (h, w) bool at ``size`` = (w, h) (area-averaged, > 50%)."""
    from pipeline.io import decode_mask

    m = decode_mask(data, max_pixels=2**31 - 1)
    if (m.shape[1], m.shape[0]) != size:
        m = cv2.resize(m, size, interpolation=cv2.INTER_AREA if m.shape[1] > size[0] else cv2.INTER_LINEAR)
    return m > 128


def _draw(rgb: np.ndarray, masks: dict[str, np.ndarray], width: int) -> np.ndarray:
    out = rgb.copy()
    for name in ("coarse", "gt", "refined"):  # refined on top
        if name in masks:
            # padded by replication: a region cut by the picture's edge gets no contour along that edge
            padded = cv2.copyMakeBorder(masks[name].astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
            contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE, offset=(-1, -1))
            cv2.drawContours(out, contours, -1, COLOURS[name], width, lineType=cv2.LINE_AA)
    return out


@dataclass
class Overlay:
    thumb: np.ndarray  # (h, w, 3) uint8 RGB with contours
    zoom: np.ndarray | None  # crop of the largest disagreement, with contours
    zoom_box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 in image pixels


def make_overlay(image_uri: str, masks: dict[str, str], size: tuple[int, int], thumb: int = 480,
                 zoom: int = 320) -> Overlay:
    """Thumbnail (long side ``thumb``) and zoom for one sample.

    masks: {"coarse" | "refined" | "gt": URI}; size: the image's (width, height) after EXIF
    orientation (manifest ``width``/``height``). The zoom shows the largest connected region
    where the refined mask differs from the truth (or, without truth, from the coarse mask),
    with a margin, scaled to long side ``zoom``.
    """
    w, h = size
    s = min(1.0, thumb / max(w, h))
    tsize = (max(1, round(w * s)), max(1, round(h * s)))
    data = read_any(image_uri)
    im = _open_image(data, max(tsize))
    resample = Image.Resampling.BOX if im.size[0] > tsize[0] else Image.Resampling.BILINEAR
    small = np.asarray(im.resize(tsize, resample))
    full = {k: _mask(read_any(u), (w, h)) for k, u in masks.items() if u}
    thumb_masks = {k: cv2.resize(m.astype(np.uint8) * 255, tsize, interpolation=cv2.INTER_AREA) > 127
                   for k, m in full.items()}
    out = _draw(small, thumb_masks, 2)
    ref = "gt" if "gt" in full else "coarse"
    if "refined" not in full or ref not in full:
        return Overlay(out, None, None)
    diff = (full["refined"] ^ full[ref]).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(diff, connectivity=8)
    if n <= 1:
        return Overlay(out, None, None)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = (int(v) for v in stats[i, :4])
    side = max(48, int(1.5 * max(bw, bh)))
    cx, cy = x + bw // 2, y + bh // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    x1, y1 = min(w, x0 + side), min(h, y0 + side)
    crop = np.asarray(_open_image(data, None).crop((x0, y0, x1, y1)))
    crop_masks = {k: m[y0:y1, x0:x1] for k, m in full.items()}
    zs = zoom / max(x1 - x0, y1 - y0)
    zsize = (max(1, round((x1 - x0) * zs)), max(1, round((y1 - y0) * zs)))
    crop = cv2.resize(crop, zsize, interpolation=cv2.INTER_NEAREST if zs >= 1 else cv2.INTER_AREA)
    crop_masks = {k: cv2.resize(m.astype(np.uint8), zsize, interpolation=cv2.INTER_NEAREST) > 0
                  for k, m in crop_masks.items()}
    return Overlay(out, _draw(crop, crop_masks, 1), (x0, y0, x1, y1))
