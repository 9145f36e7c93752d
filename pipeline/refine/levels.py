"""Where the refined line is drawn: the probability level mapped to the output's 0.5.

A refiner draws its line where its training truths put it (here: the centre of the image's edge);
people draw theirs about a pixel outside it, and a low-resolution annotation keeps the area of the
object it was drawn from. `RefineOptions.threshold`:

- a number t in (0, 1): the level t is the line (0.5 = as trained);
- ``"area"``: per output, the level in `RefineOptions.area_bounds` at which the refined mask has
  the coarse mask's area (as near as the bounds allow): the refiner still decides *where* the line
  runs, the annotation decides how much of the object's area sits inside it.

The chosen level t is applied by mapping it to 0.5 (piecewise linear, monotone: 0 and 1 stay), so
every later step (gate, edge check, writers: ``p > 0.5``) keeps its meaning.
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_level", "remap_level"]


def area_level(prob: np.ndarray, coarse01: np.ndarray, bounds: tuple[float, float] = (0.25, 0.75)) -> float:
    """The level t in ``bounds`` at which ``count(prob > t)`` is nearest ``count(coarse01 > 0.5)``.
    prob, coarse01: (H, W) float in [0, 1] of one shape."""
    lo, hi = bounds
    if not 0 < lo <= hi < 1:
        raise ValueError(f"area_level: bounds {bounds} must satisfy 0 < lo <= hi < 1")
    if prob.shape != coarse01.shape:
        raise ValueError(f"area_level: shapes differ: prob {prob.shape}, coarse {coarse01.shape}")
    target = int(np.count_nonzero(coarse01 > 0.5))
    above_hi = int(np.count_nonzero(prob > hi))
    if above_hi >= target:
        return float(hi)
    inside = prob[(prob > lo) & (prob <= hi)]
    need = target - above_hi  # how many of the in-between values must stay above the level
    if need >= inside.size:
        return float(lo)
    # the level just below the need-th largest in-between value keeps exactly `need` of them above
    kth = np.partition(inside, inside.size - need)[inside.size - need:]
    top_min = float(kth.min())
    rest = inside[inside < top_min]
    below = float(rest.max()) if rest.size else lo
    return float(min(hi, max(lo, (top_min + below) / 2)))


def remap_level(prob: np.ndarray, level: float) -> np.ndarray:
    """In place: map probability ``level`` to 0.5, linearly on each side (0 and 1 stay)."""
    if not 0 < level < 1:
        raise ValueError(f"remap_level: level {level} must be in (0, 1)")
    low = prob < level
    prob[low] *= 0.5 / level
    high = ~low
    prob[high] = 0.5 + (prob[high] - level) * (0.5 / (1 - level))
    return prob
