"""GPU memory asks of the refine stage (pure arithmetic) and the CUDA cache trimmer's decisions."""

from __future__ import annotations

import pytest

from pipeline.refine.gpu_memory import GIB, GPU_ACTOR_ENV, CacheTrimmer, gpu_shares, refiner_gpu_bytes


def test_refiner_ask_grows_with_the_image_and_halves_its_activations_in_bf16():
    assert refiner_gpu_bytes(60_000_000, "fp32") / GIB == pytest.approx(17.8, abs=0.1)  # ~17 GiB + base
    assert refiner_gpu_bytes(24_000_000, "fp32") / GIB == pytest.approx(7.72, abs=0.01)
    assert refiner_gpu_bytes(60_000_000, "bf16") < 0.65 * refiner_gpu_bytes(60_000_000, "fp32")
    with pytest.raises(ValueError, match="refine.precision"):
        refiner_gpu_bytes(1, "fp8")


@pytest.mark.parametrize("card_gib, mp, precision, sam", [
    (80, 60, "fp32", "vit_h"), (40, 24, "fp32", "vit_h"), (24, 24, "bf16", "vit_h"), (16, 24, "fp32", None),
])
def test_shares_fit_the_card_with_sam(card_gib, mp, precision, sam):
    card = card_gib * GIB
    s = gpu_shares(card, mp * 1_000_000, precision, sam)
    assert s.refine + s.sam <= 1.0
    assert s.refine_bytes <= s.refine * card  # each gets what it needs (shares rounded to 0.01)
    assert s.sam_bytes <= (s.sam + 0.01) * card
    assert s.refine_bytes + s.sam_bytes <= 0.9 * card


def test_shares_follow_the_needs():
    s = gpu_shares(80 * GIB, 60_000_000, "fp32", "vit_h")
    assert s.refine == pytest.approx(0.69, abs=0.01) and s.sam == pytest.approx(0.31, abs=0.01)
    assert gpu_shares(80 * GIB, 60_000_000, "fp32", None).refine == 1.0


def test_too_large_an_image_names_the_keys():
    with pytest.raises(ValueError, match="input.max_pixels.*60 MP.*17.8 GiB.*vit_h.*refine.precision: bf16"):
        gpu_shares(24 * GIB, 60_000_000, "fp32", "vit_h")
    with pytest.raises(ValueError, match="sam.model_type"):
        gpu_shares(80 * GIB, 1_000_000, "fp32", "vit_x")


def test_gpu_actors_grow_segments_instead_of_fragmenting():
    assert GPU_ACTOR_ENV == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def test_cache_trimmer_empties_after_a_much_larger_image():
    t = CacheTrimmer("cpu", factor=4.0)
    decisions = [t.after_image(p) for p in (1_000_000, 24_000_000, 20_000_000, 5_000_000, 1_000_000, 900_000)]
    # 5 MP after 24 MP: trim; 1 MP after 5 MP (the largest since): trim; 0.9 MP after 1 MP: keep
    assert decisions == [False, False, False, True, True, False]
