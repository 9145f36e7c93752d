"""Coarse-mask synthesis: IoU targets, polygon re-sampling, low-res degradation, crop augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.composites import alpha_to_gt, random_alpha
from pipeline.train.perturb import (
    augment_crop,
    coarse_kind,
    jitter_boundary,
    lowres_degrade,
    mask_iou,
    perturb_until,
    resample_contours,
    signed_distance,
    synth_coarse,
)


def _gt(seed: int, kind: str = "blob", size: int = 224) -> np.ndarray:
    alpha, _ = random_alpha(np.random.default_rng(seed), size, size, kind)
    return alpha_to_gt(alpha)


@pytest.mark.parametrize("target", [0.95, 0.85])
def test_perturb_until_goes_just_below_the_target(target: float) -> None:
    for seed in range(6):
        gt = _gt(seed)
        out = perturb_until(gt, gt, target, np.random.default_rng(seed))
        iou = mask_iou(out, gt)
        assert iou < target
        assert iou > target - 0.3  # stops soon after crossing, not a destroyed mask


def test_synth_coarse_iou_range_and_values() -> None:
    ious = []
    for seed in range(16):
        gt = _gt(seed, ("blob", "holes", "glyph", "branches")[seed % 4])
        rng = np.random.default_rng(100 + seed)
        c = synth_coarse(gt, rng, (0.8, 1.0), p_lowres=0.0, p_annotation=0.0, p_identity=0.0)
        assert c.dtype == np.uint8 and c.shape == gt.shape and set(np.unique(c)) <= {0, 255}
        ious.append(mask_iou(c, gt))
    ious = np.array(ious)
    assert np.all(ious < 1.0) and np.all(ious > 0.3)  # one box op can overshoot on 1-3 px branches
    assert 0.6 < np.median(ious) < 1.0


def test_synth_coarse_covers_identity_annotations_and_perturbations() -> None:
    """The training mix spans the whole IoU range, near-perfect masks included (the shipped model
    must learn to leave a good mask alone, e.g. a low-resolution annotation at IoU ~0.99)."""
    gts = [_gt(s, ("blob", "holes", "glyph", "branches")[s % 4]) for s in range(8)]
    ident = [mask_iou(synth_coarse(g, np.random.default_rng(s), p_identity=1.0), g)
             for s, g in enumerate(gts)]
    assert min(ident) >= 0.9 and max(ident) == 1.0 and np.median(ident) > 0.98
    for s, g in enumerate(gts):
        c = synth_coarse(g, np.random.default_rng(50 + s), p_identity=0.0, p_annotation=1.0)
        assert 0.4 < mask_iou(c, g) < 1.0  # thin branches lose most at 16x
    ious = np.array([mask_iou(synth_coarse(gts[s % 8], np.random.default_rng(200 + s)), gts[s % 8])
                     for s in range(60)])
    assert (ious >= 0.97).mean() > 0.1 and (ious < 0.9).mean() > 0.2


def test_coarse_kind_is_the_first_draw_of_synth_coarse() -> None:
    """A caller may draw the kind first (to treat the truth by kind) and get the same coarse mask."""
    assert [coarse_kind(u, 0.1, 0.35) for u in (0.0, 0.0999, 0.1, 0.4499, 0.45, 0.999)] == [
        "identity", "identity", "annotation", "annotation", "perturbed", "perturbed"]
    g = _gt(3)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        u = float(rng.random())
        a = synth_coarse(g, rng, kind_draw=u)
        b = synth_coarse(g, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)


def test_resample_keeps_holes_and_changes_boundary() -> None:
    gt = _gt(2, "holes")
    out = resample_contours(gt, np.random.default_rng(0), keep_rate=(0.3, 0.3), jitter=0.0)
    assert 0.6 < mask_iou(out, gt) < 1.0
    assert (out == 0).any() and (out == 255).any()


def test_lowres_degrade_is_soft_and_close() -> None:
    gt = _gt(1)
    out = lowres_degrade(gt, np.random.default_rng(0), factor=8)
    assert out.shape == gt.shape and out.dtype == np.uint8
    assert ((out > 0) & (out < 255)).any()
    assert mask_iou(out, gt) > 0.9


def test_jitter_boundary_wanders_about_a_pixel_and_only_near_the_boundary() -> None:
    gt = _gt(3)
    a = jitter_boundary(gt, np.random.default_rng(0), amplitude=(1.0, 1.0), smooth=(3.0, 3.0))
    assert np.array_equal(a, jitter_boundary(gt, np.random.default_rng(0), amplitude=(1.0, 1.0),
                                             smooth=(3.0, 3.0))), "seeded"
    assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 255}
    changed = a != gt
    assert changed.any()
    sd = signed_distance(gt > 128)
    assert np.abs(sd[changed]).max() <= 3.0 + 0.5  # clipped at 3 amplitudes
    assert np.abs(sd[changed]).mean() < 1.2  # mostly the pixels next to the line
    both = (a > 128).sum() / (gt > 128).sum()
    assert 0.97 < both < 1.03  # it wanders, it does not grow or shrink
    assert 0.9 < mask_iou(a, gt) < 1.0
    # a bigger amplitude moves more pixels; an empty or full mask stays as it is
    b = jitter_boundary(gt, np.random.default_rng(0), amplitude=(2.0, 2.0), smooth=(3.0, 3.0))
    assert (b != gt).sum() > changed.sum()
    for flat in (np.zeros_like(gt), np.full_like(gt, 255)):
        assert np.array_equal(jitter_boundary(flat, np.random.default_rng(0)), flat)


def test_augment_crop_shapes_and_alignment() -> None:
    rng = np.random.default_rng(0)
    gt = _gt(4, size=300)
    image = np.repeat(gt[..., None], 3, axis=2)  # image == mask: alignment survives crop/flip
    extra = np.repeat(gt[..., None], 3, axis=2)
    im, g, ex = augment_crop(image, gt, rng, 224, jitter=0.0, p_grey=0.0, extra=extra)
    assert im.shape == (224, 224, 3) and g.shape == (224, 224) and ex.shape == (224, 224, 3)
    np.testing.assert_array_equal(im[..., 0] > 128, g > 128)
    np.testing.assert_array_equal(ex[..., 0], g)
    small = augment_crop(image[:100, :150], gt[:100, :150], rng, 224)[0]
    assert small.shape == (224, 224, 3)
