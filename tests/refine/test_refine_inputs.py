"""refine() contract: shapes, sizes from tiny up, resizing of inputs, empty masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models import MODELS, build_model
from pipeline.refine import RefineOptions, prepare_model, refine, reflect_pad


def _blob(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1).astype(np.uint8) * 255


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("options", [RefineOptions.official(), RefineOptions()], ids=["plain", "fast"])
def test_tiny_image_every_model(name, options):
    torch.manual_seed(0)
    model = prepare_model(build_model(name), options)
    colors = _image(9, 11, seed=1) if model.in_channels == 7 else None
    prob = refine(model, _image(17, 23), _blob(17, 23), colors, options=options, device="cpu")
    assert prob.shape == (17, 23) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


@pytest.mark.parametrize("size", [(1, 1), (2, 40), (33, 3)])
def test_degenerate_sizes(random_mnv2, size):
    h, w = size
    coarse = np.full((h, w), 255, np.uint8)
    prob = refine(random_mnv2, _image(h, w), coarse, device=torch.device("cpu"))
    assert prob.shape == size and np.isfinite(prob).all()


def test_coarse_of_another_size_is_upsampled(random_mnv2):
    image = _image(60, 80)
    big = _blob(60, 80)
    small = big[::4, ::4].copy()
    prob_small = refine(random_mnv2, image, small)
    assert prob_small.shape == (60, 80)
    prob_big = refine(random_mnv2, image, big)
    agreement = ((prob_small > 0.5) == (prob_big > 0.5)).mean()
    assert agreement > 0.9


def test_empty_coarse_gives_zeros(random_mnv2):
    image = _image(30, 40)
    coarse = np.zeros((30, 40), np.uint8)
    coarse[3, 4] = 200  # (mask + 1).sum() = 2 * 200/255 < 2: still empty
    out = refine(random_mnv2, image, coarse)
    assert out.shape == (30, 40) and out.dtype == np.float32 and not out.any()
    coarse[3, 5] = 200  # now 3.1 >= 2: refined
    assert refine(random_mnv2, image, coarse).any()


def test_bad_inputs_are_value_errors(random_mnv2):
    image, coarse = _image(20, 20), _blob(20, 20)
    with pytest.raises(ValueError, match="image must be"):
        refine(random_mnv2, image.astype(np.float32), coarse)
    with pytest.raises(ValueError, match="coarse must be"):
        refine(random_mnv2, image, coarse[..., None])
    with pytest.raises(ValueError, match="sam_colors must be None"):
        refine(random_mnv2, image, coarse, image)
    v21 = build_model("samsr_v21_mnv2")
    with pytest.raises(ValueError, match="pass sam_colors"):
        refine(v21, image, coarse)
    with pytest.raises(ValueError, match="decode="):
        RefineOptions(decode="sparse")
    with pytest.raises(ValueError, match="scales"):
        RefineOptions(scales=())


def test_reflect_pad_matches_torch_and_extends_to_tiny_inputs():
    x = torch.arange(2 * 40 * 50, dtype=torch.float32).view(1, 2, 40, 50)
    torch.testing.assert_close(reflect_pad(x, 32), torch.nn.functional.pad(x, (32,) * 4, mode="reflect"))
    tiny = torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3)
    padded = reflect_pad(tiny, 5)
    assert padded.shape == (1, 1, 12, 13)
    assert set(padded.unique().tolist()) <= set(range(6))


def test_device_mismatch_and_training_mode(random_mnv2):
    image, coarse = _image(20, 24), _blob(20, 24)
    with pytest.raises(ValueError, match="weights are on cpu.*cuda"):
        refine(random_mnv2, image, coarse, device="cuda")
    expected = refine(random_mnv2, image, coarse)
    random_mnv2.train()
    try:
        np.testing.assert_array_equal(refine(random_mnv2, image, coarse), expected)  # ran in eval mode
        assert random_mnv2.training  # mode restored
    finally:
        random_mnv2.eval()


def test_align_pads_to_multiples_and_is_a_no_op_when_sizes_already_align(random_mnv2):
    image, coarse = _image(40, 56), _blob(40, 56)  # padded by 32: 104 x 120, multiples of 8
    plain = refine(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,)))
    aligned = refine(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,), align=8))
    np.testing.assert_array_equal(plain, aligned)  # at scale 0.5, 52 x 60 would become 48 x 56
    image, coarse = _image(41, 57), _blob(41, 57)  # 105 x 121: padded to 112 x 128, cropped back
    for decode in ("full", "strided", "contour"):
        for stream in (True, False):
            opts = RefineOptions(scales=(0.25, 1.0), align=8, decode=decode, stream=stream)
            prob = refine(random_mnv2, image, coarse, options=opts)
            assert prob.shape == (41, 57) and np.isfinite(prob).all()
            if decode == "full":
                official = RefineOptions.official(scales=(0.25, 1.0), align=8)
                ref = refine(random_mnv2, image, coarse, options=official)
                np.testing.assert_allclose(prob, ref, atol=1e-4)
    with pytest.raises(ValueError, match="align"):
        RefineOptions(align=0)


def test_mask_prior_model_keeps_its_input_where_the_decoder_adds_nothing():
    """A light model's decoder predicts a correction of the incoming mask: with its last layer at
    zero, each cascade step maps its incoming mask p to sigmoid(2 * (2p - 1)), in every decoding path."""
    torch.manual_seed(0)
    model = build_model("crm_mnv2")
    last = model.imnet.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    image, coarse = _image(37, 45), _blob(37, 45)
    for opts in (RefineOptions(), RefineOptions.official(), RefineOptions(decode="strided"),
                 RefineOptions(scales=(1.0,), align=8)):
        want = coarse.astype(np.float32) / 255
        for _ in opts.scales:
            want = 1 / (1 + np.exp(-model.mask_prior * (2 * want - 1)))
        prob = refine(prepare_model(model, opts), image, coarse, options=opts)
        np.testing.assert_allclose(prob, want, atol=1e-5)
