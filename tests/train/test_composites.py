"""Composites: exact ground truth, anti-aliased mattes, every shape kind, matched degradation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.train.composites import (
    SHAPE_KINDS,
    alpha_to_gt,
    find_fonts,
    make_composite,
    paste,
    random_alpha,
)


def _photos(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 3)
    b = np.zeros((320, 380, 3), np.uint8)
    b[..., 2] = 200
    return a, b


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_every_kind_is_antialiased_and_gt_is_the_binarised_matte(kind: str) -> None:
    rng = np.random.default_rng(3)
    alpha, got = random_alpha(rng, 120, 160, kind)
    assert got == kind and alpha.shape == (120, 160) and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    gt = alpha_to_gt(alpha)
    assert set(np.unique(gt)) <= {0, 255}
    assert 0.005 < (gt > 0).mean() < 0.95  # neither empty nor full
    np.testing.assert_array_equal(gt > 128, np.rint(alpha * 255) > 128)
    frac = (alpha > 0) & (alpha < 1)
    assert frac.sum() > 20  # anti-aliased boundary pixels exist ...
    edge = cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    assert np.all(edge[frac]) or frac[~edge].sum() <= 0.02 * frac.sum()  # ... and only along the boundary


def test_glyphs_use_fonts_on_the_machine() -> None:
    assert find_fonts(), "no fonts under /usr/share/fonts"
    rng = np.random.default_rng(0)
    alpha, _ = random_alpha(rng, 96, 96, "glyph", fonts=find_fonts()[:1])
    assert (alpha > 0.5).sum() > 50


def test_paste_is_exact_without_degradation() -> None:
    fg, bg = _photos()
    fg, bg = fg[:100, :120], bg[:100, :120]
    rng = np.random.default_rng(1)
    alpha, _ = random_alpha(rng, 100, 120, "holes")
    out = paste(fg, bg, alpha)
    np.testing.assert_array_equal(out[alpha == 1], fg[alpha == 1])
    np.testing.assert_array_equal(out[alpha == 0], bg[alpha == 0])
    mid = (alpha > 0.3) & (alpha < 0.7)
    assert mid.any()
    blend = alpha[mid][:, None] * fg[mid] + (1 - alpha[mid][:, None]) * bg[mid]
    assert np.abs(out[mid].astype(float) - blend).max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="shapes differ"):
        paste(fg, bg[:50], alpha)


def test_make_composite_is_seeded_and_degrades_the_whole_image() -> None:
    fg, bg = _photos()
    c1 = make_composite(np.random.default_rng(5), fg, bg, 90, 130)
    c2 = make_composite(np.random.default_rng(5), fg, bg, 90, 130)
    np.testing.assert_array_equal(c1.image, c2.image)
    np.testing.assert_array_equal(c1.gt, c2.gt)
    assert c1.image.shape == (90, 130, 3) and c1.gt.shape == (90, 130)
    np.testing.assert_array_equal(c1.gt, alpha_to_gt(c1.alpha))
    # background is flat red: noise/blur applied to the whole image make it vary even far from the shape
    far = cv2.dilate(c1.gt, np.ones((15, 15), np.uint8)) == 0
    if far.sum() > 100 and c1.image[far].std() > 0:
        assert c1.image[far][:, 2].std() > 0.1
