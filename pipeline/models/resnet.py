"""Dilated ResNet-50 encoder of CRM (the official `feats` module, DESIGN §2.1).

Module and parameter names follow the official implementation so that its checkpoint loads
strictly: `conv1`, `bn1`, `layer1`..`layer4`, each Bottleneck with `conv1..3`, `bn1..3` and
an optional `downsample` (`0` conv, `1` BN).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Bottleneck", "DilatedResNet", "resnet50_encoder"]


class Bottleneck(nn.Module):
    """ResNet bottleneck; the stride sits on the 3x3 conv, dilation applies to it too."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class DilatedResNet(nn.Module):
    """ResNet with `layer3`/`layer4` at stride 1 (dilation 2 and 4), output stride 8.

    forward(x: (B, in_channels, H, W) float32) -> (x1, x2, x3):
      x1 (B, 64, H/2, W/2) after conv1/bn1/relu; x2 (B, 256, H/4, W/4) = layer1;
      x3 (B, 1024, H/8, W/8) = layer3 (sizes rounded up as the convolutions do).
    `layer4` is built (its weights belong to the checkpoint) but only run when
    `run_layer4=True`, which is what the official code does before throwing the result away.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), in_channels: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        # The first block of each layer keeps dilation 1 (as in the official code).
        modules = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=1)]
        self.inplanes = out_planes
        modules += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def stem(self, x: Tensor) -> Tensor:
        """conv1 + bn1 + relu: (B, C, H, W) -> x1 (B, 64, H/2, W/2)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x: Tensor, run_layer4: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        x1 = self.stem(x)
        x2 = self.layer1(self.maxpool(x1))
        x3 = self.layer3(self.layer2(x2))
        if run_layer4:
            _ = self.layer4(x3)  # the official code computes and discards it
        return x1, x2, x3


def resnet50_encoder(in_channels: int = 4) -> DilatedResNet:
    """ResNet-50 (Bottleneck 3/4/6/3) dilated encoder with `in_channels` input channels."""
    return DilatedResNet((3, 4, 6, 3), in_channels=in_channels)
