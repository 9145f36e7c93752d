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


def test_refiner_ask_follows_the_tiled_encoder():
    """Tiled (``tile_encoder: auto`` above 16 MP, as the refine path does on any device): the
    precision's rate for one 2048 px tile plus the backbone's full-size rate of the image."""
    tile_mp = 2048**2 / 1e6
    gib = lambda *a: refiner_gpu_bytes(*a) / GIB  # noqa: E731
    assert gib(60_000_000, "fp32", "r50", "auto") == pytest.approx(1 + 0.28 * tile_mp + 0.13 * 60)
    assert gib(60_000_000, "bf16", "mnv2", "auto") == pytest.approx(1 + 0.17 * tile_mp + 0.07 * 60)
    assert gib(12_000_000, "fp32", "r50", "auto") == gib(12_000_000, "fp32")  # 12 MP: untiled
    assert refiner_gpu_bytes(24_000_000, "fp32", "r50", 1024) / GIB == pytest.approx(1 + 0.28 * 1024**2 / 1e6
                                                                                    + 0.13 * 24)
    # 192 MP (16000x12000): ~55 GiB untiled, ~27 tiled: an 80 GiB card holds it beside ViT-H only tiled
    assert refiner_gpu_bytes(192_000_000, "fp32", "r50", "off") / GIB == pytest.approx(54.76)
    assert refiner_gpu_bytes(192_000_000, "fp32", "r50", "auto") / GIB == pytest.approx(27.13, abs=0.01)


def _worst_card(s, card_bytes: int, cards: float) -> float:
    """Bytes the worst packing Ray could make puts on one card: as many of the larger need as
    fit by shares when the shares are equal; the pair on a one-card cluster otherwise."""
    if s.sam == 0 or s.sam == s.refine:
        k = int(1 / s.refine + 1e-9)
        return k * max(s.refine_bytes, s.sam_bytes)
    assert cards < 2 and s.refine + s.sam <= 1.0  # unequal shares only where the pair is the only packing
    return s.refine_bytes + s.sam_bytes


@pytest.mark.parametrize("card_gib", [16, 24, 40, 80, 141])
@pytest.mark.parametrize("mp", [6, 24, 60, 192])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sam", [None, "vit_b", "vit_h"])
@pytest.mark.parametrize("cards", [1, 4])
def test_any_packing_ray_makes_fits_the_card_or_the_config_fails(card_gib, mp, precision, sam, cards):
    card = card_gib * GIB
    try:
        s = gpu_shares(card, mp * 1_000_000, precision, sam, backbone="r50", tile_encoder="auto", cards=cards)
    except ValueError as e:
        assert str(e).startswith("input.max_pixels: ") and "ray.gpu_memory_gb" in str(e)
        assert _needed(card, mp, precision, sam, cards) > 0.9 * card
        return
    assert s.card_bytes == card and _worst_card(s, card, cards) <= 0.9 * card
    assert (s.sam > 0) == (sam is not None) and 0 < s.refine <= 1.0


def _needed(card: int, mp: int, precision: str, sam: str | None, cards: int) -> float:
    """What had to fit when gpu_shares refused: the refiner alone, or on one card the pair."""
    from pipeline.refine.gpu_memory import sam_gpu_bytes

    refine = refiner_gpu_bytes(mp * 1_000_000, precision, "r50", "auto")
    return refine + sam_gpu_bytes(sam) if sam and cards < 2 else refine


def test_shares_follow_the_needs():
    # an 80 GiB card holds any two of ViT-H (8 GiB) and the fp32 refiner at 60 MP untiled (17.8 GiB)
    s = gpu_shares(80 * GIB, 60_000_000, "fp32", "vit_h")
    assert (s.refine, s.sam) == (0.5, 0.5) and s.refine_bytes / GIB == pytest.approx(17.8, abs=0.1)
    assert gpu_shares(80 * GIB, 60_000_000, "fp32", None).refine == 1.0
    # 16 GiB (14.4 usable): two ViT-H do not fit, ViT-H + the bf16 refiner (24 MP tiled, 4.8 GiB) do:
    # on a one-card cluster in proportion to the needs; with more cards a card each
    one = gpu_shares(16 * GIB, 24_000_000, "bf16", "vit_h", tile_encoder="auto", cards=1)
    assert (one.refine, one.sam) == (0.37, 0.63)
    assert one.refine_bytes / GIB == pytest.approx(4.83, abs=0.01)
    many = gpu_shares(16 * GIB, 24_000_000, "bf16", "vit_h", tile_encoder="auto", cards=4)
    assert (many.refine, many.sam) == (1.0, 1.0)


def test_too_large_an_image_names_the_keys():
    with pytest.raises(ValueError, match="input.max_pixels.*60 MP.*10.0 GiB.*fp32 beside SAM vit_h.*16.0 GiB"
                                         ".*ray.gpu_memory_gb.*refine.precision: bf16"):
        gpu_shares(16 * GIB, 60_000_000, "fp32", "vit_h", tile_encoder="auto")
    with pytest.raises(ValueError, match="input.max_pixels.*60 MP.*17.8 GiB"):  # untiled: alone too large
        gpu_shares(16 * GIB, 60_000_000, "fp32", None)
    with pytest.raises(ValueError, match="sam.model_type: SAM vit_h needs ~8.0 GiB"):
        gpu_shares(8 * GIB, 1_000_000, "fp32", "vit_h")
    with pytest.raises(ValueError, match="sam.model_type"):
        gpu_shares(80 * GIB, 1_000_000, "fp32", "vit_x")


def test_an_explicit_share_must_hold_as_many_actors_as_it_lets_share_a_card():
    s = gpu_shares(80 * GIB, 24_000_000, "fp32", "vit_h", per_actor=0.25)  # 4 x 8 GiB fit 72 GiB
    assert (s.refine, s.sam) == (0.25, 0.25)
    with pytest.raises(ValueError, match=r"ray.gpus_per_actor: 0.25 lets 4 actors share a card.*holds 2"):
        gpu_shares(24 * GIB, 24_000_000, "fp32", "vit_h", per_actor=0.25)


def test_card_memory_is_read_with_nvidia_smi(tmp_path, monkeypatch):
    from pipeline.refine.gpu_memory import card_memory_bytes

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=memory.total ] && printf '81559\\n40960\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert card_memory_bytes() == 40960 * 2**20  # the smallest card
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert card_memory_bytes() is None
    assert card_memory_bytes("no-such-nvidia-smi") is None


def test_gpu_actors_grow_segments_instead_of_fragmenting():
    assert GPU_ACTOR_ENV == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def test_cache_trimmer_empties_after_a_much_larger_image():
    t = CacheTrimmer("cpu", factor=4.0)
    decisions = [t.after_image(p) for p in (1_000_000, 24_000_000, 20_000_000, 5_000_000, 1_000_000, 900_000)]
    # 5 MP after 24 MP: trim; 1 MP after 5 MP (the largest since): trim; 0.9 MP after 1 MP: keep
    assert decisions == [False, False, False, True, True, False]
