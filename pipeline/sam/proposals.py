"""SAM proposals for one image: masks at SAM's working size, the colour map and a label map.

The colour map is the extra input of SAM-SR-v2.1 (DESIGN §2.2): masks sorted by area, large
first, each painted with a random colour, so smaller masks paint over larger ones; pixels no
mask covers stay black (0, 0, 0). Colours are drawn from ``numpy.random.default_rng`` seeded by
a SHA-256 of ``(key, seed)`` (stable across processes, unlike Python's ``hash``), each channel
uniform in 1..255 so no mask is ever painted black like a gap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.sam.generator import FastMaskGenerator, SamMasks

__all__ = ["SamProposals", "colour_map_to_size", "paint", "propose", "stable_seed", "to_working_size",
           "working_shape"]


@dataclass
class SamProposals:
    """Proposals for one image, all at the working size (h, w).

    masks: (N, h, w) bool, in paint order (area descending; ties keep the generator's order)
    scores: (N,) float32 SAM predicted IoU; stability: (N,) float32; areas: (N,) int64 pixels
    colour_map: (h, w, 3) uint8 RGB, black where no mask
    label_map: (h, w) int32, 0 where no mask, i + 1 where masks[i] is the last mask painted
    image_size: (H, W) of the full image the proposals were made for
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    areas: np.ndarray
    colour_map: np.ndarray
    label_map: np.ndarray
    image_size: tuple[int, int]

    @property
    def working_size(self) -> tuple[int, int]:
        return (int(self.label_map.shape[0]), int(self.label_map.shape[1]))

    def colour_map_full(self) -> np.ndarray:
        """The colour map at the full image size: (H, W, 3) uint8, nearest-neighbour resize."""
        return colour_map_to_size(self.colour_map, self.image_size)


def stable_seed(key: str, seed: int = 0) -> int:
    """A 64-bit seed from ``(key, seed)`` that is the same in every process and platform."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def working_shape(height: int, width: int, working_size: int) -> tuple[int, int]:
    """(h, w) with the long side ``working_size`` (SAM's `ResizeLongestSide` rounding); images
    whose long side is already <= ``working_size`` keep their size (never upscaled)."""
    if working_size < 1:
        raise ValueError(f"working_size must be >= 1, got {working_size}")
    if max(height, width) <= working_size:
        return height, width
    scale = working_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_working_size(image: np.ndarray, working_size: int = 1024) -> np.ndarray:
    """image (H, W, 3) uint8 -> (h, w, 3) uint8 with long side ``working_size`` (area resize)."""
    h, w = working_shape(image.shape[0], image.shape[1], working_size)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def colour_map_to_size(colour_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w, 3) uint8 colour map to ``size`` = (H, W) with nearest neighbour."""
    if tuple(colour_map.shape[:2]) == tuple(size):
        return colour_map
    return cv2.resize(colour_map, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


def paint(masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint (N, h, w) bool masks in the given order: later masks over earlier ones.

    Returns the (h, w) int32 label map (0 = none, i + 1 = masks[i]) and the (h, w, 3) uint8
    colour map (colours drawn from ``rng``: one (3,) colour per mask, channels in 1..255).
    """
    n, h, w = masks.shape
    colours = rng.integers(1, 256, size=(n, 3), dtype=np.uint8)
    label_map = np.zeros((h, w), dtype=np.int32)
    for i in range(n):  # later masks over earlier ones (a boolean store is ~15x faster than a
        label_map[masks[i]] = i + 1  # chunked max over stacked masks at 200+ masks of 1024 px)
    palette = np.concatenate([np.zeros((1, 3), np.uint8), colours])
    return label_map, palette[label_map]


def propose(generator: FastMaskGenerator, image: np.ndarray, key: str, working_size: int = 1024,
            seed: int = 0) -> SamProposals:
    """SAM proposals for ``image`` ((H, W, 3) uint8 RGB) named ``key``.

    SAM sees the image at its working size (long side ``working_size``, never the full image);
    masks, colour map and label map are at that size. Use `SamProposals.colour_map_full` for
    the refiner's (H, W, 3) input.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample {key}: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    small = to_working_size(image, working_size)
    found: SamMasks = generator.generate(small)
    order = np.argsort(-found.areas, kind="stable")
    in_order = bool(np.array_equal(order, np.arange(len(order))))
    masks = found.masks if in_order else found.masks[order]  # no copy when already sorted
    label_map, colour_map = paint(masks, np.random.default_rng(stable_seed(key, seed)))
    return SamProposals(
        masks=masks, scores=found.scores[order], stability=found.stability[order],
        areas=found.areas[order], colour_map=colour_map, label_map=label_map,
        image_size=(int(image.shape[0]), int(image.shape[1])),
    )
