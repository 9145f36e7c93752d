"""FastMaskGenerator's opt-in non-exact modes: the image encoder under bf16 autocast, the
reassociated mask decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.bench.sam import best_match_iou, matched
from pipeline.bench.sam import run as run_sam_bench
from pipeline.sam.generator import FastMaskGenerator


def _record_autocast(module: torch.nn.Module, seen: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(
        lambda mod, args, out: seen.append((torch.is_autocast_enabled("cpu"), out[0].dtype
                                            if isinstance(out, tuple) else out.dtype)))


def test_bf16_runs_only_the_encoder_under_autocast(sam_small, image):
    enc, dec = [], []
    handles = [_record_autocast(sam_small.image_encoder.blocks[0].mlp.lin1, enc),
               _record_autocast(sam_small.mask_decoder, dec)]
    gen = FastMaskGenerator(sam_small, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            shared_decoder=False, precision="bf16")
    try:
        gen.generate(image)
    finally:
        for h in handles:
            h.remove()
    assert enc == [(True, torch.bfloat16)]  # one encoder call, its matrix products in bf16
    assert dec and all(not on and dtype == torch.float32 for on, dtype in dec)  # decoder in fp32


def test_bf16_features_close_but_not_exact(sam_small, image):
    fp32 = FastMaskGenerator(sam_small, points_per_side=4)
    bf16 = FastMaskGenerator(sam_small, points_per_side=4, precision="bf16")
    fp32._encode(image)
    ref = fp32.predictor.features.clone()
    bf16._encode(image)
    got = bf16.predictor.features
    assert got.dtype == torch.float32 and got.shape == ref.shape
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 2e-2, rel


def test_fp32_is_default_and_bad_precision_named(sam_small):
    assert FastMaskGenerator(sam_small, points_per_side=4).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of .*'int8'"):
        FastMaskGenerator(sam_small, points_per_side=4, precision="int8")


def test_matched_ignores_order_and_counts_both_ways():
    a = np.zeros((3, 10, 10), bool)
    a[0, :5], a[1, 5:], a[2, :, :2] = True, True, True
    b = a[[2, 0]].copy()  # two of a's masks, reordered
    b[0, 0, 5] = True  # a[2] with 1 pixel more: IoU 20/21
    np.testing.assert_allclose(best_match_iou(a, b), [1.0, 10 / 61, 20 / 21])
    m = matched(a, b)
    assert m["recall"] == pytest.approx(1 / 3) and m["precision"] == pytest.approx(1 / 2)
    assert m["min_iou"] == pytest.approx(10 / 61)
    assert matched(a, a) == {"recall": 1.0, "precision": 1.0, "min_iou": 1.0}
    assert matched(a, np.zeros((0, 10, 10), bool))["recall"] == 0.0


def test_bench_reports_the_bf16_mode():
    r = run_sam_bench("tiny", points_per_side=4, height=96, width=128, precision="bf16")
    assert r["precision"] == "bf16" and r["identical"]  # the fp32 fast path stays exact
    for k in ("speedup_low", "speedup_low_cpu", "low_recall", "low_precision", "low_min_iou"):
        assert 0.0 <= r[k] < float("inf")
    assert r["masks_low"] >= 0 and 0.0 <= r["low_recall"] <= 1.0


SETTINGS = [dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
            dict(points_per_side=8, pred_iou_thresh=0.07, stability_score_thresh=0.7),
            dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.85, crop_n_layers=1)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_reassociated_masks_match_stock(sam_small, image, settings):
    """The opt-in mode's masks have IoU >= 0.99 with stock's, both ways (random weights, whose
    logits sit close to the threshold, are the hard case for a non-exact mode)."""
    from segment_anything import SamAutomaticMaskGenerator

    stock = SamAutomaticMaskGenerator(sam_small, **settings).generate(image)
    fast = FastMaskGenerator(sam_small, reassociate=True, **settings).generate(image)
    assert len(stock) >= 5
    m = matched(np.stack([a["segmentation"] for a in stock]), fast.masks)
    assert m == {"recall": 1.0, "precision": 1.0, "min_iou": pytest.approx(1.0, abs=0.01)}


def test_reassociate_needs_the_shared_decoder(sam_small):
    with pytest.raises(ValueError, match="reassociate needs shared_decoder"):
        FastMaskGenerator(sam_small, points_per_side=4, reassociate=True, shared_decoder=False)
