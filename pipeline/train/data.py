"""Training data: sources of (image, ground truth) and the crop dataset fed to the refiner.

Sources (picklable, so Ray workers can rebuild them):
- :class:`LayoutSource`: any pipeline input layout with ground truth (prefix / webdataset / list),
  through ``pipeline.io.list_samples`` / ``load_sample``.
- :class:`CompositeSource`: composites generated on the fly from photographs (exact ground truth).

:class:`CropDataset` turns a source into 224x224 training crops with synthetic coarse masks
(:func:`pipeline.train.perturb.synth_coarse`) and, for SAM-SR-v2.1, the cached SAM colour map.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.boundary import move_line
from pipeline.train.composites import find_fonts, make_composite
from pipeline.train.perturb import COARSE_KINDS, augment_crop, coarse_kind, jitter_boundary, synth_coarse

__all__ = ["LayoutSource", "CompositeSource", "ConcatSource", "CropDataset", "image_key", "load_photo"]


def image_key(image: np.ndarray) -> str:
    """Content key of an image: sha256 over shape and pixels, first 20 hex chars."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:20]


def load_photo(uri: str, max_side: int) -> np.ndarray:
    """Read a photo (any fsspec URI) as (H, W, 3) uint8 RGB with long side <= max_side."""
    from pipeline.io.fs import open_fs

    fs, path = open_fs(uri)
    with fs.open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"load_photo: cannot decode {uri}")
    s = max_side / max(img.shape[:2])
    if s < 1:
        size = (round(img.shape[1] * s), round(img.shape[0] * s))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])


class LayoutSource:
    """Samples with ground truth from a pipeline input layout.

    get(i) -> (key, image (H, W, 3) uint8, gt (H, W) uint8). Only image + ground truth are
    needed (a coarse mask, if the layout has one, is not read). Raises ValueError naming the
    sample when it has no ground truth.
    """

    def __init__(self, uri: str, layout: str = "prefix", max_pixels: int = 4096 * 4096,
                 **suffixes: Any) -> None:
        from pipeline.io import list_samples

        self.refs = list(list_samples(uri, layout=layout, **suffixes))
        self.max_pixels = max_pixels
        if not self.refs:
            raise ValueError(f"LayoutSource: no samples found at {uri!r} (layout {layout!r})")
        missing = [r.key for r in self.refs if getattr(r, "gt_uri", None) is None]
        if missing:
            raise ValueError(f"LayoutSource {uri!r}: sample {missing[0]!r} (and {len(missing) - 1} more) "
                             "has no ground truth; training needs image + gt")

    def __len__(self) -> int:
        return len(self.refs)

    def get(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        from pipeline.io import load_image_gt

        image, gt = load_image_gt(self.refs[i], max_pixels=self.max_pixels)
        return self.refs[i].key, image, gt


class CompositeSource:
    """``count`` composites generated deterministically from photographs (seeded per index).

    photos: list of image URIs (loaded lazily, long side <= ``photo_max_side``); each composite's
    long side is drawn from ``size_range``.
    """

    def __init__(self, photos: Sequence[str], count: int, size_range: tuple[int, int] = (384, 768),
                 seed: int = 0, photo_max_side: int = 1536) -> None:
        if len(photos) < 2:
            raise ValueError(f"CompositeSource needs >= 2 photos, got {len(photos)}")
        if count < 1:
            raise ValueError(f"CompositeSource: count must be >= 1, got {count}")
        self.photos, self.count, self.size_range = list(photos), count, size_range
        self.seed, self.photo_max_side = seed, photo_max_side
        self._cache: dict[str, np.ndarray] = {}
        self._fonts: list[str] | None = None

    def __len__(self) -> int:
        return self.count

    def _photo(self, uri: str) -> np.ndarray:
        if uri not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[uri] = load_photo(uri, self.photo_max_side)
        return self._cache[uri]

    def get(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        if self._fonts is None:
            self._fonts = find_fonts()
        rng = np.random.default_rng([self.seed, 7, i])
        a, b = rng.choice(len(self.photos), size=2, replace=False)
        long = int(rng.integers(self.size_range[0], self.size_range[1] + 1))
        short = int(long * rng.uniform(0.6, 0.9))
        h, w = (short, long) if rng.random() < 0.7 else (long, short)
        c = make_composite(rng, self._photo(self.photos[a]), self._photo(self.photos[b]), h, w,
                           fonts=self._fonts)
        return f"composite{i:06d}", c.image, c.gt


class ConcatSource:
    """Several sources one after another: get(i) indexes their concatenation."""

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise ValueError("ConcatSource needs at least one source")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        j = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[j].get(i - int(self.offsets[j]))


class CropDataset(Dataset):
    """Training crops: item -> dict of float32 tensors ``image`` (3, S, S) in [0, 1], ``coarse``
    (1, S, S) in [0, 1], ``gt`` (1, S, S) in {0, 1}, plus ``sam`` (3, S, S) in [0, 1] when
    ``sam_lookup`` is given (a callable (key, image) -> (h, w, 3) uint8 colour map).

    ``length`` items per epoch (default: the source size); item i uses sample i % len(source)
    and a generator seeded by (seed, epoch, i), so an epoch is reproducible. ``p_truth_jitter``:
    the share of crops whose truth gets a hand-drawn-like boundary (:func:`jitter_boundary`)
    before the coarse mask is made from it (0: no extra random draw, items as before), among the
    crops whose coarse kind (:func:`coarse_kind`) is in ``truth_jitter_kinds``.
    ``p_truth_offset``: the share of crops whose truth has its line moved ``truth_offset`` whole
    pixels outward (:func:`pipeline.boundary.move_line`; people draw about a pixel outside the
    image's edge), before any jitter and before the coarse mask is made from it, so the coarse mask
    carries the same convention (0: no extra random draw).
    """

    def __init__(self, source: Any, crop: int = 224, seed: int = 0, length: int | None = None,
                 iou_range: tuple[float, float] = (0.75, 1.0), p_lowres: float = 0.3,
                 p_annotation: float = 0.35, p_identity: float = 0.1,
                 jitter: float = 0.2, p_grey: float = 0.1, sam_lookup: Any = None,
                 p_truth_jitter: float = 0.0, truth_jitter_kinds: tuple[str, ...] = COARSE_KINDS,
                 p_truth_offset: float = 0.0, truth_offset: int = 1) -> None:
        self.source, self.crop, self.seed = source, crop, seed
        self.length = length or len(source)
        self.iou_range, self.p_lowres, self.jitter, self.p_grey = iou_range, p_lowres, jitter, p_grey
        self.p_annotation, self.p_identity = p_annotation, p_identity
        unknown = set(truth_jitter_kinds) - set(COARSE_KINDS)
        if unknown:
            raise ValueError(f"truth_jitter_kinds: unknown kind(s) {sorted(unknown)}; "
                             f"known: {list(COARSE_KINDS)}")
        self.p_truth_jitter, self.truth_jitter_kinds = p_truth_jitter, tuple(truth_jitter_kinds)
        self.p_truth_offset, self.truth_offset = p_truth_offset, int(truth_offset)
        self.sam_lookup = sam_lookup
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        key, image, gt = self.source.get(int(i) % len(self.source))
        extra = None
        if self.sam_lookup is not None:
            colours = self.sam_lookup(key, image)
            extra = cv2.resize(colours, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
        im, g, ex = augment_crop(image, gt, rng, self.crop, self.jitter, self.p_grey, extra)
        g = np.where(g > 128, 255, 0).astype(np.uint8)
        u = None
        if self.p_truth_offset > 0 and rng.random() < self.p_truth_offset:
            g = move_line(g, self.truth_offset)  # the truth drawn with another line convention
        if self.p_truth_jitter > 0:  # the coarse kind is drawn first, to jitter only the chosen kinds
            u = float(rng.random())
            kind = coarse_kind(u, self.p_identity, self.p_annotation)
            if kind in self.truth_jitter_kinds and rng.random() < self.p_truth_jitter:
                g = jitter_boundary(g, rng)  # a hand-drawn-like truth (the coarse mask is made from it)
        coarse = synth_coarse(g, rng, self.iou_range, p_lowres=self.p_lowres, p_annotation=self.p_annotation,
                              p_identity=self.p_identity, kind_draw=u)
        out = {
            "image": torch.from_numpy(im).permute(2, 0, 1).float() / 255.0,
            "coarse": torch.from_numpy(coarse).unsqueeze(0).float() / 255.0,
            "gt": torch.from_numpy(g).unsqueeze(0).float() / 255.0,
        }
        if ex is not None:
            out["sam"] = torch.from_numpy(ex).permute(2, 0, 1).float() / 255.0
        return out
