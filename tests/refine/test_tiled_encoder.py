"""Tiled encoding (issue 32): the halo rule, tile arithmetic, tiled vs whole-image agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.models import build_model
from pipeline.refine import RefineOptions, prepare_model, refine, reflect_pad
from pipeline.refine.encoder import encode_reduced
from pipeline.refine.inputs import pad_index
from pipeline.refine.tiled import (
    AUTO_PIXELS,
    AUTO_TILE,
    axis_spans,
    encode_tiled,
    encoder_geometry,
    receptive_radius,
    resolve_tile,
    scaled_region,
)
from tests.helpers import randomise_bn


def _blob(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1).astype(np.uint8) * 255


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (so the refiner's output has structure), uint8 RGB."""
    low = np.random.default_rng(seed).uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    t = torch.from_numpy(low).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(h, w), mode="bilinear").clamp(0, 255)[0].permute(1, 2, 0).byte().numpy()


def _random(name: str, seed: int):
    torch.manual_seed(seed)
    return prepare_model(randomise_bn(build_model(name), seed=seed + 1, weight=(0.5, 1.0)))


@pytest.mark.parametrize("name", ["crm_mnv2", "crm_r50", "samsr_v21_mnv2"])
def test_receptive_radius_and_halo_of_the_encoders(name):
    # by hand, MobileNetV2: 1 + 2 (stride 2) + 2 + 4 (stride 4) + 4 + 2*8 + 8 + 6*16 (stride 8, dilation 2);
    # ResNet-50: 3 (7x7) + 2 (max-pool) + 3*4 + 4 + 3*8 + 8 + 5*16; layer4 does not feed x3
    encoder = build_model(name).feats
    assert receptive_radius(encoder) == (133, 8)
    assert encoder_geometry(encoder) == (136, 8)  # rounded up to the stride: tile origins stay aligned


@pytest.mark.parametrize("name,tight", [("crm_r50", True), ("crm_mnv2", False)])
def test_radius_bounds_what_an_x3_cell_sees(name, tight):
    """An x3 cell centred on input column 8j depends on no column beyond 8j +- 133; for ResNet-50
    the bound is reached (the columns at exactly 133 px change it)."""
    model = _random(name, 0)
    x = torch.randn(1, 4, 8, 400, generator=torch.Generator().manual_seed(0))
    j = 25  # centre column 200
    with torch.inference_mode():
        ref = model.feats(x)[2][..., j]
        for offset in (-134, -133, 133, 134):
            y = x.clone()
            y[..., 200 + offset] += 5.0
            diff = float((model.feats(y)[2][..., j] - ref).abs().max())
            if abs(offset) > 133:
                assert diff == 0, (offset, diff)
            elif tight:
                assert diff > 0, offset


def test_axis_spans_own_the_axis_once_and_keep_origins_on_the_stride():
    spans = axis_spans(1000, 256, 136)
    assert [(s.own0, s.own1, s.in0, s.in1) for s in spans] == [
        (0, 256, 0, 392), (256, 512, 120, 648), (512, 768, 376, 904), (768, 1000, 632, 1000)]
    assert all(s.in0 % 8 == 0 for s in spans)
    assert axis_spans(100, 256, 136) == axis_spans(100, 104, 136)[:1]  # one tile: the whole axis
    with pytest.raises(ValueError, match="tile"):
        axis_spans(100, 0, 8)


def test_resolve_tile():
    assert resolve_tile("off", (10_000, 10_000), 8) is None
    assert resolve_tile("auto", (4000, 4000), 8) is None  # 16 MP: not above AUTO_PIXELS
    assert 4000 * 4000 <= AUTO_PIXELS < 4008 * 4000
    assert resolve_tile("auto", (4008, 4000), 8) == AUTO_TILE
    assert resolve_tile(100, (1000, 800), 8) == 104  # rounded up to the stride
    assert resolve_tile(1000, (1000, 800), 8) is None  # one tile covers the input
    assert resolve_tile(1000, (1001, 800), 8) == 1000


def test_a_halo_short_of_the_radius_changes_the_stitched_maps():
    """The rule is needed: with the full halo the stitched levels equal the whole-image ones,
    with a shorter halo they do not (ResNet-50 over a strip of 10 tiles of 64 px)."""
    from pipeline.refine.encoder import _reduced_of

    model = _random("crm_r50", 1)
    opts = RefineOptions()
    size = (48, 600)
    base, mask = torch.randn(1, 3, *size), torch.rand(1, 1, *size) * 2 - 1
    halo, _ = encoder_geometry(model.feats)
    with torch.inference_mode():
        whole = encode_reduced(model, base, mask, size, RefineOptions(tile_encoder="off"))

        def encode(make):
            return _reduced_of(model, make, opts)

        def region(rows, cols):
            return scaled_region(base, mask, size, rows, cols)

        full = encode_tiled(encode, region, size, 64, halo)
        short = encode_tiled(encode, region, size, 64, 16)
    for w, f, s in zip(whole, full, short):
        assert w.shape == f.shape == s.shape
        torch.testing.assert_close(f, w, atol=1e-5, rtol=1e-5)
    assert max(float((s - w).abs().max()) for s, w in zip(short, whole)) > 1e-2


def test_scaled_region_is_the_region_of_the_resized_input():
    base, mask = torch.randn(1, 6, 50, 70), torch.randn(1, 1, 50, 70)  # RGB + colours, mask
    inp = torch.cat([base[:, :3], mask, base[:, 3:]], 1)  # the encoder's channel order
    whole = F.interpolate(inp, size=(37, 41), mode="bilinear", align_corners=True)
    region = scaled_region(base, mask, (37, 41), (8, 30), (16, 41))
    torch.testing.assert_close(region, whole[:, :, 8:30, 16:41])
    assert torch.equal(scaled_region(base, mask, (50, 70), (8, 30), (16, 41)), inp[:, :, 8:30, 16:41])


@pytest.mark.parametrize("h,w,pad,align", [(40, 50, 32, 1), (41, 57, 32, 8), (2, 3, 5, 8), (1, 6, 4, 1)])
def test_pad_index_matches_reflect_pad_and_alignment(h, w, pad, align):
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    padded = reflect_pad(x, pad)
    dh, dw = -padded.shape[-2] % align, -padded.shape[-1] % align
    if dh or dw:
        mode = "reflect" if dh < padded.shape[-2] and dw < padded.shape[-1] else "replicate"
        padded = F.pad(padded, (0, dw, 0, dh), mode=mode)
    rows, cols = pad_index(h, w, pad, align)
    assert torch.equal(x[0, 0][torch.from_numpy(rows)][:, torch.from_numpy(cols)], padded[0, 0])


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "official-path"])
def test_tiled_refine_agrees_with_untiled_light_model(stream):
    model = _random("crm_mnv2", 2)
    image, coarse = _textured(200, 260, 3), _blob(200, 260)[::4, ::4].copy()
    common = dict(scales=(0.5, 1.0), align=8)
    if not stream:
        common.update(stream=False, patched_fusion=False, factorize_decoder=False)
    untiled = refine(model, image, coarse, options=RefineOptions(tile_encoder="off", **common))
    tiled = refine(model, image, coarse, options=RefineOptions(tile_encoder=64, **common))
    assert 0.05 < float((untiled > 0.5).mean()) < 0.95  # a non-trivial output
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    assert np.array_equal(tiled > 0.5, untiled > 0.5)


def test_tiled_refine_agrees_with_untiled_resnet50():
    model = _random("crm_r50", 4)
    image, coarse = _textured(272, 272, 5), _blob(272, 272)[::8, ::8].copy()
    # padded 336 x 336: 3 x 3 tiles of 128 px; the outer ones are cut 136 px past their owned part
    opts = dict(scales=(1.0,), align=8)
    untiled = refine(model, image, coarse, options=RefineOptions(tile_encoder="off", **opts))
    tiled = refine(model, image, coarse, options=RefineOptions(tile_encoder=128, **opts))
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    assert np.array_equal(tiled > 0.5, untiled > 0.5)


def test_a_scale_below_one_tile_of_a_tiled_image_is_gathered_not_resized_from_full_floats(monkeypatch):
    """200x260 padded to 264x328 with tiles of 256 px is tiled, its 1/8 scale (32x40) is not: that
    input is gathered from the uint8 image at its own size (the whole-image float input, ~28 B/px,
    is never built) and agrees with untiled; with tile_encoder off it is the official resize."""
    import pipeline.refine.encoder as encoder

    model = _random("crm_mnv2", 6)
    image, coarse = _textured(200, 260, 7), _blob(200, 260)[::4, ::4].copy()
    opts = dict(scales=(0.125, 1.0), align=8)
    untiled = refine(model, image, coarse, options=RefineOptions(tile_encoder="off", **opts))
    full_size = []
    whole = encoder._scaled_input
    monkeypatch.setattr(encoder, "_scaled_input", lambda *a: full_size.append(a[2]) or whole(*a))
    tiled = refine(model, image, coarse, options=RefineOptions(tile_encoder=256, **opts))
    assert full_size == []
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    assert np.array_equal(tiled > 0.5, untiled > 0.5)
    refine(model, image, coarse, options=RefineOptions(tile_encoder="off", **opts))
    assert full_size == [(32, 40), (264, 328)]  # untiled: the official resize at every scale


def test_bad_tile_encoder_values():
    for bad in ("big", 32, True, 1.5, None):
        with pytest.raises(ValueError, match="RefineOptions.tile_encoder"):
            RefineOptions(tile_encoder=bad)
    assert RefineOptions(tile_encoder=False).tile_encoder == "off"
    assert RefineOptions().tile_encoder == "auto"


@pytest.mark.parametrize("with_colors", [False, True])
def test_padded_image_gathers_what_the_padded_tensor_holds(with_colors):
    from pipeline.models.crm import make_input
    from pipeline.refine.inputs import PaddedImage

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    colors = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8) if with_colors else None
    rows, cols = pad_index(30, 45, 32, 8)
    lazy = PaddedImage(image, colors, rows, cols, "cpu")
    # the whole-image computation: make_input on float images, then the padding index maps
    as_float = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    inp = make_input(as_float(image), torch.zeros(1, 1, 30, 45),
                     None if colors is None else as_float(colors))
    r, c = torch.from_numpy(rows), torch.from_numpy(cols)
    full = torch.cat([inp[:, :3], inp[:, 4:]], 1)[:, :, r][:, :, :, c].contiguous()
    assert lazy.shape == tuple(full.shape) == (1, 6 if with_colors else 3, 96, 112)
    assert torch.equal(lazy.full(), full)
    r, c = torch.tensor([0, 5, 95, 40]), torch.tensor([111, 3, 3, 60])
    assert torch.equal(lazy.take(r, c), full[:, :, r][:, :, :, c])
    mask = torch.rand(1, 1, 96, 112)
    for size in ((96, 112), (50, 61)):  # identity and a downscale: the region equals the tensor path's
        assert torch.equal(scaled_region(lazy, mask, size, (8, 40), (16, 56)),
                           scaled_region(full, mask, size, (8, 40), (16, 56)))
