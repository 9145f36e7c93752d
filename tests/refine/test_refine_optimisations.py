"""Every exact optimisation against the plain (official-style) path on the same weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.refine import RefineOptions, fold_batchnorm, prepare_model, refine

TOLERANCE = 1e-4
PLAIN = RefineOptions.official(tile=32)  # small tiles: many tiles, borders, halos
ALL = dict(
    skip_layer4=True,
    layer1_strips=True,
    fold_bn=True,
    factorize_decoder=True,
    patched_fusion=True,
    stream=True,
)
R50_SWITCHES = {
    "skip_layer4": dict(skip_layer4=True),
    "layer1_strips": dict(layer1_strips=True),
    "fold_bn": dict(fold_bn=True),
    "factorize_decoder": dict(factorize_decoder=True),
    "all": ALL,
}
MNV2_SWITCHES = {
    "patched_fusion": dict(patched_fusion=True),
    "patched_fusion_factorized": dict(patched_fusion=True, factorize_decoder=True),
    "stream_plain_decoder": dict(stream=True),
    "stream_factorized": dict(stream=True, factorize_decoder=True),
    "all_tile8": dict(ALL, tile=8),
    "all_tile1000": dict(ALL, tile=1000),
}


def _run(model, image, coarse, options, colors=None):
    return refine(prepare_model(model, options), image, coarse, colors, options=options)


def _plain(model, case):
    prob = _run(model, *case, PLAIN)
    assert prob.std() > 0.005 and 0.02 < (prob > 0.5).mean() < 0.98, "reference output is degenerate"
    return prob


@pytest.fixture(scope="module")
def plain_r50(golden_crm, small_case):
    return _plain(golden_crm, small_case)


@pytest.fixture(scope="module")
def plain_mnv2(random_mnv2, small_case):
    return _plain(random_mnv2, small_case)


@pytest.mark.parametrize("switch", sorted(R50_SWITCHES))
def test_optimisation_matches_plain_r50(golden_crm, small_case, plain_r50, switch):
    prob = _run(golden_crm, *small_case, replace(PLAIN, **R50_SWITCHES[switch]))
    assert np.abs(prob - plain_r50).max() <= TOLERANCE


@pytest.mark.parametrize("switch", sorted(MNV2_SWITCHES))
def test_optimisation_matches_plain_mnv2(random_mnv2, small_case, plain_mnv2, switch):
    prob = _run(random_mnv2, *small_case, replace(PLAIN, **MNV2_SWITCHES[switch]))
    assert np.abs(prob - plain_mnv2).max() <= TOLERANCE


def test_fold_bn_is_a_copy_and_idempotent(golden_crm):
    options = RefineOptions()
    prepared = prepare_model(golden_crm, options)
    assert prepared is not golden_crm
    assert prepare_model(prepared, options) is prepared
    assert not any(isinstance(m, nn.BatchNorm2d) and m is prepared.feats.bn1 for m in prepared.modules())
    assert isinstance(golden_crm.feats.bn1, nn.BatchNorm2d)  # original untouched
    # the BN layers that follow a ReLU (bn1_*) cannot be folded and stay
    assert isinstance(prepared.aspp_.bn1_128, nn.BatchNorm2d)
    assert prepare_model(golden_crm, RefineOptions(fold_bn=False)) is golden_crm


def test_fold_batchnorm_preserves_the_function(random_mnv2):
    folded = prepare_model(random_mnv2, RefineOptions())
    assert fold_batchnorm(folded) == 0  # nothing left to fold
    x = torch.randn(1, 4, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x), random_mnv2.encode(x), rtol=1e-4, atol=1e-5)


def test_sam_v21_all_optimisations_match_plain(random_mnv2, small_case):
    from pipeline.models import build_model

    image, coarse = small_case
    v21 = build_model("samsr_v21_mnv2", crm_checkpoint=random_mnv2.state_dict())
    with torch.no_grad():  # make the colour channels matter
        v21.feats.features[0][0].weight[:, 4:].normal_(0, 0.5)
    colors = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    plain = _run(v21, image, coarse, PLAIN, colors)
    fast = _run(v21, image, coarse, RefineOptions(tile=32), colors)
    assert plain.std() > 0.005
    assert np.abs(fast - plain).max() <= TOLERANCE


@pytest.mark.parametrize("height", [97, 98])
@pytest.mark.parametrize("strip", [5, 16])
def test_layer1_strips_equal_whole_layer1(golden_crm, height, strip):
    from pipeline.refine.encoder import layer1_in_strips

    x1 = torch.randn(1, 64, height, 23, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        whole = golden_crm.feats.layer1(golden_crm.feats.maxpool(x1))
        strips = layer1_in_strips(golden_crm.feats, x1, strip)
    assert strips.shape == whole.shape
    torch.testing.assert_close(strips, whole, rtol=1e-5, atol=1e-5)  # float rounding only


@pytest.mark.parametrize("height", [61, 62])
def test_layer2_strips_equal_whole_layer2(golden_crm, height):
    from pipeline.refine.encoder import halving_in_strips

    x2 = torch.relu(torch.randn(1, 256, height, 19, generator=torch.Generator().manual_seed(height)))
    with torch.no_grad():
        whole = golden_crm.feats.layer2(x2)
        strips = halving_in_strips(golden_crm.feats.layer2, x2, strip=6)
    assert strips.shape == whole.shape
    torch.testing.assert_close(strips, whole, rtol=1e-5, atol=1e-5)


def test_encode_reduced_equals_reduce_of_whole_encoder(golden_crm, monkeypatch):
    import pipeline.refine.encoder as encoder

    # force several strips on a small input
    monkeypatch.setattr(encoder.halving_in_strips, "__defaults__", (8, 4))
    monkeypatch.setattr(encoder.layer1_in_strips, "__defaults__", (8,))
    monkeypatch.setattr(encoder._reduce_in_place, "__defaults__", (8,))
    base = torch.randn(1, 3, 150, 70, generator=torch.Generator().manual_seed(0))
    mask = torch.randn(1, 1, 150, 70, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    with torch.no_grad():
        whole = golden_crm.aspp_.reduce(*golden_crm.feats(torch.cat([base, mask], dim=1)))
        reduced = encoder.encode_reduced(golden_crm, base, mask, (150, 70), RefineOptions())
    for got, expected in zip(reduced, whole):  # float rounding only: 1e-5 of the level's scale
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
