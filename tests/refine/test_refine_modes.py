"""Decoding modes (strided, bbox, contour) against full decoding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.refine import RefineOptions, prepare_model, refine
from pipeline.refine.modes import roi_mask
from tests.refine._golden import read_golden


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Binarised (p * 255 > 128) pixel agreement and IoU."""
    a, b = a * 255 > 128, b * 255 > 128
    return float((a == b).mean()), float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def golden_case(golden_crm):
    image, coarse, _ = read_golden("g389x517")
    model = prepare_model(golden_crm, RefineOptions())
    full = refine(model, image, coarse)
    return model, image, coarse, full


def test_strided_agrees_with_full(golden_case):
    model, image, coarse, full = golden_case
    prob = refine(model, image, coarse, options=RefineOptions(decode="strided", stride=4))
    agreement, iou = _agreement(prob, full)
    print(f"strided s=4 vs full: agreement {agreement:.4f} IoU {iou:.4f}")
    assert agreement >= 0.98 and iou >= 0.95
    assert np.abs(prob - full).max() < 0.25  # interpolated values stay close


@pytest.mark.parametrize("mode", ["bbox", "contour"])
def test_roi_modes_keep_coarse_outside_and_move_towards_full(golden_case, mode):
    model, image, coarse, full = golden_case
    options = RefineOptions(decode=mode, roi_margin=24)
    prob = refine(model, image, coarse, options=options)
    region = roi_mask(torch.from_numpy(coarse).float() / 255, mode, 24).numpy()
    assert 0 < region.mean() < 1
    np.testing.assert_array_equal(prob[~region], coarse[~region].astype(np.float32) / 255)
    agreement, iou = _agreement(prob, full)
    base_agreement, base_iou = _agreement(coarse.astype(np.float32) / 255, full)
    print(
        f"{mode} vs full: agreement {agreement:.4f} IoU {iou:.4f} "
        f"(coarse: {base_agreement:.4f} {base_iou:.4f})"
    )
    assert agreement > base_agreement and iou > base_iou


def test_stride_one_and_whole_image_box_equal_full(random_mnv2, small_case):
    image, coarse = small_case
    base = RefineOptions(tile=32)
    full = refine(random_mnv2, image, coarse, options=base)
    strided = refine(random_mnv2, image, coarse, options=replace(base, decode="strided", stride=1))
    np.testing.assert_array_equal(strided, full)
    boxed = refine(random_mnv2, image, coarse, options=replace(base, decode="bbox", roi_margin=10_000))
    np.testing.assert_array_equal(boxed, full)


def test_strided_mode_optimised_equals_plain(random_mnv2, small_case):
    image, coarse = small_case
    options = RefineOptions(decode="strided", stride=8, tile=32)
    plain = refine(random_mnv2, image, coarse, options=RefineOptions.official(decode="strided", stride=8))
    fast = refine(random_mnv2, image, coarse, options=options)
    assert np.abs(fast - plain).max() <= 1e-4  # exact optimisations hold in strided mode too


def test_roi_mask_shapes():
    mask = torch.zeros(40, 50)
    mask[10:20, 15:30] = 1
    box = roi_mask(mask, "bbox", 3).numpy()
    assert box.sum() == (10 + 6) * (15 + 6) and box[7, 12] and not box[6, 12]
    band = roi_mask(mask, "contour", 2).numpy()
    assert band[10, 20] and band[14, 15] and not band[15, 22] and not band[0, 0]
    with pytest.raises(ValueError, match="unknown mode"):
        roi_mask(mask, "circle", 2)


@pytest.mark.parametrize("tta", ["rot180", "flip4"])
def test_tta_is_the_mean_over_flipped_inputs(random_mnv2, small_case, tta):
    """tta = mean of refine() on each flipped input, flipped back; 'none' is one plain pass."""
    image, coarse = small_case
    options = RefineOptions(scales=(0.5, 1.0), align=8)
    plain = refine(random_mnv2, image, coarse, options=options)
    once = refine(random_mnv2, image, coarse, options=replace(options, tta="none"))
    np.testing.assert_array_equal(once, plain)
    flips = [(False, False), (True, True)] + ([(False, True), (True, False)] if tta == "flip4" else [])
    expected = []
    for rows, cols in flips:
        im, co = image, coarse
        if rows:
            im, co = im[::-1], co[::-1]
        if cols:
            im, co = im[:, ::-1], co[:, ::-1]
        p = refine(random_mnv2, np.ascontiguousarray(im), np.ascontiguousarray(co), options=options)
        expected.append(p[::-1] if rows else p)
        if cols:
            expected[-1] = expected[-1][:, ::-1]
    got = refine(random_mnv2, image, coarse, options=replace(options, tta=tta))
    assert got.shape == image.shape[:2] and got.dtype == np.float32
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-6)
    # the model is not flip-equivariant, so the passes differ and the mean is not the plain pass
    assert np.abs(got - plain).max() > 1e-3


def test_tta_mode_is_checked():
    with pytest.raises(ValueError, match="tta"):
        RefineOptions(tta="rot90")


def test_gate_keeps_the_coarse_mask_where_the_refiner_is_unsure(random_mnv2, small_case):
    """gate g: pixels with |p - 0.5| <= g take the coarse value, the others keep p; a half-size
    coarse mask is resized like the model's input."""
    image, coarse = small_case
    options = RefineOptions(scales=(1.0,), tta="rot180")
    plain = refine(random_mnv2, image, coarse, options=options)
    unsure = np.abs(plain - 0.5) <= 0.2
    assert 0.01 < unsure.mean() < 0.99  # the random model is unsure somewhere, sure elsewhere
    gated = refine(random_mnv2, image, coarse, options=replace(options, gate=0.2))
    np.testing.assert_array_equal(gated[~unsure], plain[~unsure])
    np.testing.assert_array_equal(gated[unsure], coarse[unsure].astype(np.float32) / 255)
    small = np.ascontiguousarray(coarse[::2, ::2])
    prob = refine(random_mnv2, image, small, options=RefineOptions(scales=(1.0,), gate=0.49))
    resized = torch.nn.functional.interpolate(torch.from_numpy(small).float()[None, None], size=coarse.shape,
                                              mode="bilinear", align_corners=False)[0, 0].numpy() / 255
    sure = np.abs(refine(random_mnv2, image, small, options=RefineOptions(scales=(1.0,))) - 0.5) > 0.49
    np.testing.assert_allclose(prob[~sure], resized[~sure], atol=1e-6)
    with pytest.raises(ValueError, match="gate"):
        RefineOptions(gate=0.5)
