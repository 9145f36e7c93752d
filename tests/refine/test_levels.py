"""The line level (`RefineOptions.threshold`): area-following level, remapping to 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.refine import RefineOptions
from pipeline.refine.cascade import refine, refine_detailed
from pipeline.refine.levels import area_level, remap_level


def _ramp(h: int = 40, w: int = 50) -> np.ndarray:
    """Probabilities falling from 1 to 0 across the columns (a soft vertical line)."""
    return np.tile(np.linspace(1, 0, w, dtype=np.float32), (h, 1))


@pytest.mark.parametrize("columns", [10, 20, 30])
def test_area_level_gives_the_coarse_area(columns):
    prob = _ramp()
    coarse = np.zeros_like(prob)
    coarse[:, :columns] = 1
    level = area_level(prob, coarse, (0.01, 0.99))
    assert np.count_nonzero(prob > level) == np.count_nonzero(coarse > 0.5)
    remap_level(prob, level)
    assert np.count_nonzero(prob > 0.5) == 40 * columns


def test_area_level_stays_within_its_bounds():
    prob = _ramp()
    small = np.zeros_like(prob)
    small[:, :2] = 1  # needs a level near 0.97: clipped to the upper bound
    assert area_level(prob, small, (0.25, 0.75)) == 0.75
    big = np.zeros_like(prob)
    big[:, :48] = 1
    assert area_level(prob, big, (0.25, 0.75)) == 0.25
    with pytest.raises(ValueError, match="bounds"):
        area_level(prob, big, (0.8, 0.2))
    with pytest.raises(ValueError, match="shapes differ"):
        area_level(prob, big[:, :3], (0.2, 0.8))


def test_remap_level_is_monotone_and_keeps_0_and_1():
    p = np.linspace(0, 1, 101, dtype=np.float32)
    out = remap_level(p.copy(), 0.3)
    assert out[0] == 0 and out[-1] == pytest.approx(1)
    assert out[30] == pytest.approx(0.5)
    assert np.all(np.diff(out) > 0)
    with pytest.raises(ValueError):
        remap_level(p.copy(), 1.0)


def test_threshold_option_is_validated():
    assert RefineOptions(threshold="area").threshold == "area"
    assert RefineOptions(threshold=0.3).threshold == 0.3
    for bad in ("median", 0.0, 1.0):
        with pytest.raises(ValueError, match="threshold"):
            RefineOptions(threshold=bad)
    with pytest.raises(ValueError, match="area_bounds"):
        RefineOptions(area_bounds=(0.6, 0.4))


def test_refine_with_the_area_level_keeps_the_coarse_area_better(random_mnv2, small_case):
    image, coarse = small_case
    target = np.count_nonzero(coarse > 128)
    plain = refine(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,)))
    r = refine_detailed(random_mnv2, image, coarse,
                        options=RefineOptions(scales=(1.0,), threshold="area", area_bounds=(0.05, 0.95)))
    assert 0.05 <= r.threshold <= 0.95 and r.threshold != 0.5
    assert abs(np.count_nonzero(r.prob > 0.5) - target) < abs(np.count_nonzero(plain > 0.5) - target)
    # the same probabilities, only the level moved: the order of pixels is kept
    assert np.array_equal(np.argsort(plain.ravel(), kind="stable")[-50:],
                          np.argsort(r.prob.ravel(), kind="stable")[-50:])
    assert np.array_equal(r.coarse01 > 0.5, coarse >= 128)  # 128 / 255 > 0.5
    assert r.spread is None  # one pass
