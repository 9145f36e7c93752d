"""FastMaskGenerator returns SamAutomaticMaskGenerator's masks, encodes the image once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import batched_mask_to_box

from pipeline.sam.generator import FastMaskGenerator, SamMasks, mask_boxes, upscale_logits
from tests.sam.conftest import decoder_inputs

SETTINGS = [
    # thresholds lowered so that the random model's masks survive; each row exercises a path
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
    dict(points_per_side=8, pred_iou_thresh=0.07, stability_score_thresh=0.7),
    dict(points_per_side=10, pred_iou_thresh=0.0, stability_score_thresh=0.9, box_nms_thresh=0.9,
         points_per_batch=32),
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.85, crop_n_layers=1),
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5, min_mask_region_area=20),
    # IoU filter that leaves some prompts without any passing mask (their upscaling is skipped)
    dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.0, box_nms_thresh=1.0),
]


def _assert_same(stock: list[dict], fast: SamMasks) -> None:
    assert len(fast) == len(stock)
    fast_anns = fast.to_annotations()
    for a, b in zip(stock, fast_anns):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"] and a["crop_box"] == b["crop_box"]
        assert a["point_coords"] == b["point_coords"]
        assert a["predicted_iou"] == b["predicted_iou"]
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=0, nan_ok=True)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_same_masks_as_stock(sam_small, image, settings):
    stock = SamAutomaticMaskGenerator(sam_small, **settings).generate(image)
    fast = FastMaskGenerator(sam_small, **settings).generate(image)
    assert len(stock) >= 5, "the test image/settings must give a non-trivial number of masks"
    assert fast.masks.shape == (len(stock), *image.shape[:2]) and fast.masks.dtype == np.bool_
    _assert_same(stock, fast)
    assert np.array_equal(fast.areas, fast.masks.reshape(len(fast), -1).sum(1))


def test_thresholds_filter(sam_small, image):
    loose = FastMaskGenerator(sam_small, points_per_side=8, pred_iou_thresh=0.0,
                              stability_score_thresh=0.0, box_nms_thresh=1.0).generate(image)
    strict = FastMaskGenerator(sam_small, points_per_side=8, pred_iou_thresh=0.0,
                               stability_score_thresh=0.9, box_nms_thresh=1.0).generate(image)
    assert len(loose) == 8 * 8 * 3  # NMS at IoU 1.0 removes nothing
    assert 0 < len(strict) < len(loose)
    assert (strict.stability >= 0.9).all()
    assert np.all(np.diff(loose.scores) <= 0)  # NMS returns masks by descending score


def test_same_masks_as_stock_at_1024(sam_tiny):
    """The official tiny config at a 1024-pixel input, on a working-size-like image, with the
    stock thresholds' shape (predicted-IoU filter active)."""
    from pipeline.bench.sam import synthetic_image

    img = synthetic_image(96, 128, 20, seed=3)
    settings = dict(points_per_side=6, pred_iou_thresh=0.1, stability_score_thresh=0.6)
    stock = SamAutomaticMaskGenerator(sam_tiny, **settings).generate(img)
    fast = FastMaskGenerator(sam_tiny, **settings).generate(img)
    assert len(stock) >= 3
    _assert_same(stock, fast)


def test_encodes_image_once(sam_small, image):
    calls = []
    handle = sam_small.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        gen = FastMaskGenerator(sam_small, points_per_side=12, points_per_batch=16,
                                pred_iou_thresh=0.0, stability_score_thresh=0.9)
        gen.generate(image)  # 144 prompts in 9 batches
        assert len(calls) == 1
        FastMaskGenerator(sam_small, points_per_side=4, crop_n_layers=1).generate(image)
        assert len(calls) == 1 + 5  # one per crop: the image and 4 crops
    finally:
        handle.remove()


def test_upscale_logits_bit_identical(sam_small):
    torch.manual_seed(0)
    low = torch.randn(5, 1, 256, 256) * 4
    for input_size, orig in [((768, 1024), (768, 1024)), ((1024, 683), (1500, 1001)),
                             ((1024, 1024), (1024, 1024)), ((770, 1024), (600, 798))]:
        ref = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
        ref = ref[..., : input_size[0], : input_size[1]]
        ref = F.interpolate(ref, orig, mode="bilinear", align_corners=False)
        got = upscale_logits(low, 1024, input_size, orig)
        assert got.shape == ref.shape
        assert torch.equal(got, ref)


def test_mask_boxes_match_sam():
    torch.manual_seed(1)
    masks = torch.rand(6, 40, 50) > 0.995
    masks[0] = False
    masks[1, 3:9, 7:20] = True
    assert torch.equal(mask_boxes(masks), batched_mask_to_box(masks))
    assert mask_boxes(masks)[0].tolist() == [0, 0, 0, 0]


def test_rle_output_matches_stock(sam_small, image):
    settings = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.8)
    stock = SamAutomaticMaskGenerator(sam_small, output_mode="uncompressed_rle", **settings).generate(image)
    fast = FastMaskGenerator(sam_small, **settings).generate(image).to_annotations("uncompressed_rle")
    assert len(stock) > 0
    assert [a["segmentation"] for a in stock] == [b["segmentation"] for b in fast]


def test_bad_arguments(sam_small, image):
    with pytest.raises(ValueError, match="Sam"):
        FastMaskGenerator(object())
    with pytest.raises(ValueError, match="exactly one"):
        FastMaskGenerator(sam_small, points_per_side=None)
    with pytest.raises(ValueError, match="uint8"):
        FastMaskGenerator(sam_small, points_per_side=4).generate(image.astype(np.float32))
    with pytest.raises(ValueError, match="output_mode"):
        FastMaskGenerator(sam_small, points_per_side=4).generate(image).to_annotations("png")


def test_no_mask_survives(sam_small, image):
    settings = dict(points_per_side=4, pred_iou_thresh=0.99, stability_score_thresh=0.95)
    assert SamAutomaticMaskGenerator(sam_small, **settings).generate(image) == []
    fast = FastMaskGenerator(sam_small, **settings).generate(image)
    assert len(fast) == 0 and fast.masks.shape == (0, *image.shape[:2])
    assert fast.boxes.shape == (0, 4) and fast.to_annotations() == []


@pytest.mark.parametrize("reassociate", [False, True], ids=["shared", "reassociated"])
@pytest.mark.parametrize("model", ["sam_small", "sam_tiny"])
def test_shared_decoder_equals_mask_decoder(model, reassociate, request):
    """The shared decoder: the same operations on the same rows (equal here; a BLAS whose
    results depend on the number of rows would show up as tiny differences). Reassociated
    (opt-in): the same function in another order of operations, equal up to float rounding."""
    from pipeline.sam.decoder import decode_points

    sam = request.getfixturevalue(model)
    features, pe, sparse, dense = decoder_inputs(sam, 16, seed=0)
    with torch.inference_mode():
        ref_masks, ref_iou = sam.mask_decoder(features, pe, sparse, dense, multimask_output=True)
        masks, iou = decode_points(sam, features, pe, sparse, dense, reassociate=reassociate)
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    if reassociate:
        assert not torch.equal(masks, ref_masks)  # really another order of operations
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-5 * float(ref_masks.abs().max()))
    torch.testing.assert_close(iou, ref_iou, rtol=0, atol=1e-5 if reassociate else 1e-6)


def test_stock_decoder_option(sam_small, image):
    settings = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.8)
    a = FastMaskGenerator(sam_small, shared_decoder=False, **settings).generate(image)
    b = FastMaskGenerator(sam_small, **settings).generate(image)
    assert len(a) == len(b) > 0 and np.array_equal(a.masks, b.masks)


@pytest.mark.parametrize("model", ["sam_small", "sam_tiny"])
def test_upscale_subset_equals_full_batch(model, request):
    """Upscaling only some prompts gives their rows of the full-batch decoder output, bit for bit."""
    from pipeline.sam.decoder import decode_tokens, upscale_masks

    sam = request.getfixturevalue(model)
    features, pe, sparse, dense = decoder_inputs(sam, 12, seed=1)
    with torch.inference_mode():
        ref_masks, ref_iou = sam.mask_decoder(features, pe, sparse, dense, multimask_output=True)
        decoded = decode_tokens(sam, features, pe, sparse, dense)
        for prompts in ([0, 5, 11], [3], [2, 7], list(range(12)), []):
            got = upscale_masks(sam, decoded, torch.tensor(prompts, dtype=torch.int64))
            assert got.shape == (len(prompts), *ref_masks.shape[1:])
            assert torch.equal(got, ref_masks[prompts])
    assert torch.equal(decoded.iou_pred, ref_iou)


def test_only_passing_prompts_upscaled(sam_small, image):
    gen = FastMaskGenerator(sam_small, points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.0,
                            box_nms_thresh=1.0)
    found = gen.generate(image)
    stats = gen.last_stats
    assert stats["prompts"] == 64
    assert 0 < stats["prompts_upscaled"] < 64
    assert stats["prompts_upscaled"] <= stats["masks_passing_iou"] <= 3 * stats["prompts_upscaled"]
    assert len(found) <= stats["masks_passing_iou"] and (found.scores > 0.2).all()
    gen = FastMaskGenerator(sam_small, points_per_side=8, shared_decoder=False, pred_iou_thresh=0.2)
    gen.generate(image)
    assert gen.last_stats["prompts_upscaled"] == 64
    assert gen.last_stats["masks_passing_iou"] == stats["masks_passing_iou"]
    gen = FastMaskGenerator(sam_small, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.7)
    gen.generate(image)
    assert gen.last_stats == {"prompts": 64, "prompts_upscaled": 64, "masks_passing_iou": 192}
