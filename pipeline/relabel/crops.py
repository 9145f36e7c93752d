"""The crop rule of re-labeling: each object (a COCO instance or one class of a label map) is
refined at full resolution inside a window around its box, then pasted back.

Rule (``crop_box``), with the object's box ``(x0, y0, x1, y1)`` in full-resolution pixels
(exclusive ends) inside an image of ``(height, width)``:

1. margin = ``max(min_margin, round(margin_ratio * max(box width, box height)))`` on every side
   (defaults 0.25 and 16 px: the refiner sees the object's surroundings, as in CRM's crops);
2. a side shorter than ``min_size`` (default 256 px) grows to ``min_size`` around the box's
   centre, so a tiny instance still gets enough context for the refiner's encoder;
3. the window is shifted (not shrunk) to lie inside the image where it fits, and clipped to
   the image where it does not.

Pure integer arithmetic; the same window for the same inputs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CropRule", "crop_box", "box_of", "upsample_window"]


@dataclass(frozen=True)
class CropRule:
    margin_ratio: float = 0.25
    min_margin: int = 16
    min_size: int = 256

    def __post_init__(self) -> None:
        if not (0.0 <= self.margin_ratio <= 10.0):
            raise ValueError(f"relabel.margin_ratio: must be in [0, 10], got {self.margin_ratio!r}")
        if self.min_margin < 0:
            raise ValueError(f"relabel.min_margin: must be >= 0, got {self.min_margin!r}")
        if self.min_size < 1:
            raise ValueError(f"relabel.min_size: must be >= 1, got {self.min_size!r}")


def _axis(lo: int, hi: int, margin: int, min_size: int, n: int) -> tuple[int, int]:
    lo, hi = lo - margin, hi + margin
    if hi - lo < min_size:
        grow = min_size - (hi - lo)
        lo -= grow // 2
        hi += grow - grow // 2
    if hi - lo >= n:
        return 0, n
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > n:
        lo, hi = lo - (hi - n), n
    return lo, hi


def crop_box(
    box: tuple[int, int, int, int], height: int, width: int, rule: CropRule = CropRule()
) -> tuple[int, int, int, int]:
    """The refinement window ``(x0, y0, x1, y1)`` (exclusive ends, inside the image) for an
    object whose box is ``box`` = ``(x0, y0, x1, y1)`` in full-resolution pixels."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if height < 1 or width < 1:
        raise ValueError(f"crop_box: empty image {height}x{width}")
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop_box: empty box {box} in a {width}x{height} image")
    margin = max(rule.min_margin, int(round(rule.margin_ratio * max(x1 - x0, y1 - y0))))
    cx0, cx1 = _axis(x0, x1, margin, rule.min_size, width)
    cy0, cy1 = _axis(y0, y1, margin, rule.min_size, height)
    return cx0, cy0, cx1, cy1


def box_of(mask) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (exclusive ends) of the non-zero pixels of a 2-D array, or None."""
    import numpy as np

    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def upsample_window(low, height: int, width: int, box: tuple[int, int, int, int]):
    """The window ``box`` = ``(x0, y0, x1, y1)`` of ``low`` (h, w) resized to (height, width)
    bilinearly with half-pixel centres -- the data contract's upsampling of a coarse mask,
    ``cv2.resize(low, (width, height), INTER_LINEAR)[y0:y1, x0:x1]`` within one grey
    level (fixed-point rounding) -- without building the full-size array.
    low: (h, w) uint8; returns (y1 - y0, x1 - x0) uint8."""
    import cv2
    import numpy as np

    x0, y0, x1, y1 = box
    h, w = low.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(low[y0:y1, x0:x1])
    sx, sy = w / width, h / height
    # destination pixel (u, v) of the window samples source ((x0 + u + 0.5) * sx - 0.5, ...)
    m = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]],
                 dtype=np.float64)
    return cv2.warpAffine(
        np.ascontiguousarray(low), m, (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
