"""CRM network (Shen et al., CVPR 2022) with the official module names (DESIGN §2.1).

`CRMNet` = encoder `feats` (x1, x2, x3 at strides 2/4/8) -> fusion `aspp_` (feature map F
at stride 2) -> LIIF implicit decoder `imnet` queried at continuous coordinates.
Coordinates are in [-1, 1], row first, at pixel centres (`make_coord`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BASE_CHANNELS",
    "PROPOSAL_CHANNELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CRMNet",
    "Fusion",
    "MLP",
    "linear_fp32",
    "make_coord",
    "make_input",
    "ENSEMBLE_EPS",
]

BASE_CHANNELS = 4  # RGB + mask (CRM)
PROPOSAL_CHANNELS = 3  # + the proposal colour map (SAM-SR-v2.1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENSEMBLE_EPS = 1e-6  # official eps shift and clamp margin of the local ensemble


def make_coord(
    shape: Sequence[int], device: torch.device | str | None = None, flatten: bool = True
) -> Tensor:
    """Pixel-centre coordinates of an (n0, n1, ...) grid in [-1, 1], first axis first.

    Returns (prod(shape), len(shape)) float32 if `flatten` else (*shape, len(shape)).
    Computed exactly like the official (LIIF) helper: v = -1 + r + 2r * arange(n), r = 1/n.
    """
    seqs = []
    for n in shape:
        r = 1.0 / n  # (v1 - v0) / (2n) with v0, v1 = -1, 1
        seqs.append(-1 + r + (2 * r) * torch.arange(n, device=device).float())
    grid = torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1)
    return grid.reshape(-1, grid.shape[-1]) if flatten else grid


def make_input(image: Tensor, mask: Tensor, colors: Tensor | None = None) -> Tensor:
    """Network input from (B, 3, H, W) RGB in [0, 1], (B, 1, H, W) mask in [0, 1] and
    optional (B, 3, H, W) SAM colour map in [0, 1].

    RGB is ImageNet-normalised, mask and colours are mapped to [-1, 1] (x * 2 - 1).
    Returns (B, 4 or 7, H, W) float32.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    parts = [(image - mean) / std, mask * 2 - 1]
    if colors is not None:
        parts.append(colors * 2 - 1)
    return torch.cat(parts, dim=1)


class _Branch(nn.Module):
    """Official `_ASPPModule` with a 1x1 kernel: conv (no bias) + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.atrous_conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class Fusion(nn.Module):
    """The official `aspp_` (ASPP_no4level): three levels -> one stride-2 feature map.

    Level i: 1x1 conv + BN + ReLU (`aspp1_*`), then BN + ReLU (`bn1_*`) (+ dropout when
    training); levels 2 and 3 are upsampled bilinearly (align_corners=True) to level 1's
    size, concatenated and passed through `last_conv` (3x3 conv, BN, ReLU, dropout).
    The attribute names are the official ones whatever the widths.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 256, 1024),
        mid_channels: Sequence[int] = (64, 64, 128),
        out_channels: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c1, c2, c3 = in_channels
        m1, m2, m3 = mid_channels
        self.aspp1_128 = _Branch(c1, m1)
        self.aspp1_256 = _Branch(c2, m2)
        self.aspp1_1024 = _Branch(c3, m3)
        self.bn1_128 = nn.BatchNorm2d(m1)
        self.bn1_256 = nn.BatchNorm2d(m2)
        self.bn1_1024 = nn.BatchNorm2d(m3)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.last_conv = nn.Sequential(
            nn.Conv2d(m1 + m2 + m3, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reduce_level(self, level: int, x: Tensor) -> Tensor:
        """1x1 reduction of level 0, 1 or 2 (x1, x2 or x3), pointwise: (B, m_level, h, w)."""
        branch, norm = (
            (self.aspp1_128, self.bn1_128),
            (self.aspp1_256, self.bn1_256),
            (self.aspp1_1024, self.bn1_1024),
        )[level]
        return self.dropout(self.relu(norm(branch(x))))

    def reduce(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-level 1x1 reductions at their own strides: (B, m1|m2|m3, h_i, w_i)."""
        return self.reduce_level(0, x1), self.reduce_level(1, x2), self.reduce_level(2, x3)

    def fuse(self, a1: Tensor, a2: Tensor, a3: Tensor) -> Tensor:
        """Upsample a2/a3 to a1's size, concat, last_conv: (B, out_channels, h1, w1)."""
        size = a1.shape[-2:]
        a2 = F.interpolate(a2, size=size, mode="bilinear", align_corners=True)
        a3 = F.interpolate(a3, size=size, mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat((a1, a2, a3), dim=1))

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> Tensor:
        return self.fuse(*self.reduce(x1, x2, x3))


def linear_fp32(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, in float32 even under torch.autocast: the decoder's first layer sees the
    LIIF coordinates (relative offsets, query coordinates, cells), which bf16 would round to
    ~0.004 in [-1, 1] (~12 px at 6000 rows). Without autocast this is ``layer(x)`` itself."""
    if not torch.is_autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


class MLP(nn.Module):
    """Official `imnet`: Linear/ReLU stack; parameters at `layers.{0,2,4,...}`. The first layer
    runs in float32 under autocast (`linear_fp32`), the others in the autocast type."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        first, rest = self.layers[0], self.layers[1:]
        return rest(linear_fp32(first, x.reshape(-1, x.shape[-1]))).reshape(*shape, -1)


class CRMNet(nn.Module):
    """CRM: `feats` encoder, `aspp_` fusion, `imnet` decoder.

    forward(inp (B, C_in, h, w), coord (B, Q, 2), cell (B, Q, 2)) -> logits (B, Q) float32.
    `inp` comes from `make_input`; `coord` are query pixel centres in [-1, 1] (row first) and
    `cell` the query pixel size in the same units (2/H, 2/W).

    `mask_prior` (0 for CRM, which keeps the official function): when > 0 the logit of a query
    is the decoder's output plus ``mask_prior * m``, where m in [-1, 1] is the incoming mask at
    the query pixel (the full-resolution coarse mask, or the previous cascade step's output).
    The decoder then predicts a correction of the incoming mask (a residual): where it outputs
    0 the mask is kept, so an untrained or unsure decoder cannot erode a good mask.
    """

    def __init__(self, encoder: nn.Module, fusion: Fusion, hidden: Sequence[int] = (32, 32, 32, 32),
                 mask_prior: float = 0.0) -> None:
        super().__init__()
        if mask_prior < 0:
            raise ValueError(f"mask_prior must be >= 0, got {mask_prior}")
        self.feats = encoder
        self.aspp_ = fusion
        self.imnet = MLP(fusion.out_channels + 6, 1, hidden)
        self.in_channels: int = encoder.in_channels
        self.feat_dim: int = fusion.out_channels
        self.mask_prior: float = float(mask_prior)

    @property
    def takes_proposals(self) -> bool:
        """Whether the input has the proposal colour map (SAM-SR-v2.1) after RGB and mask."""
        return self.in_channels == BASE_CHANNELS + PROPOSAL_CHANNELS

    def encode(self, inp: Tensor, run_layer4: bool = False) -> Tensor:
        """(B, C_in, h, w) -> feature map F (B, feat_dim, ceil(h/2), ceil(w/2))."""
        if inp.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} input channels, got {inp.shape[1]}")
        return self.aspp_(*self.feats(inp, run_layer4=run_layer4))

    def query(self, feat: Tensor, coord: Tensor, cell: Tensor, prior: Tensor | None = None) -> Tensor:
        """LIIF local ensemble exactly as the official decoder: logits (B, Q).

        prior: (B, Q) incoming mask in [-1, 1] at the queries; required iff ``mask_prior`` > 0
        (its term ``mask_prior * prior`` is added to the blended logits).

        For each of 4 offsets (±1/h_F row, ±1/w_F col, +eps, clamped) the nearest feature
        vector (grid_sample, mode nearest, align_corners=False) and its cell centre give the
        MLP input [feature, (q - centre) * (h_F, w_F), q, cell * (h_F, w_F)]; predictions
        are blended with the area of the diagonally opposite neighbour.
        """
        b, _, h, w = feat.shape
        centres = make_coord((h, w), device=feat.device, flatten=False).permute(2, 0, 1)
        centres = centres.unsqueeze(0).expand(b, 2, h, w)
        rel_cell = cell.clone()
        rel_cell[..., 0] *= h
        rel_cell[..., 1] *= w
        preds, areas = [], []
        for vy in (-1, 1):
            for vx in (-1, 1):
                shifted = coord.clone()
                shifted[..., 0] += vy * (1.0 / h) + ENSEMBLE_EPS
                shifted[..., 1] += vx * (1.0 / w) + ENSEMBLE_EPS
                shifted.clamp_(-1 + ENSEMBLE_EPS, 1 - ENSEMBLE_EPS)
                grid = shifted.flip(-1).unsqueeze(1)
                q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0]
                q_centre = F.grid_sample(centres, grid, mode="nearest", align_corners=False)[:, :, 0]
                rel = coord - q_centre.permute(0, 2, 1)
                rel[..., 0] *= h
                rel[..., 1] *= w
                inp = torch.cat([q_feat.permute(0, 2, 1), rel, coord, rel_cell], dim=-1)
                preds.append(self.imnet(inp)[..., 0])
                areas.append(torch.abs(rel[..., 0] * rel[..., 1]) + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        out = 0
        for pred, area in zip(preds, reversed(areas)):
            out = out + pred * (area / total)
        return self.add_prior(out, prior)

    def add_prior(self, logits: Tensor, prior: Tensor | None) -> Tensor:
        """``logits + mask_prior * prior`` (logits unchanged when ``mask_prior`` is 0)."""
        if not self.mask_prior:
            return logits
        if prior is None:
            raise ValueError("this model adds the incoming mask to its output "
                             f"(mask_prior={self.mask_prior}): "
                             "pass prior, the mask in [-1, 1] at the queries")
        return logits + self.mask_prior * prior

    def forward(self, inp: Tensor, coord: Tensor, cell: Tensor, prior: Tensor | None = None) -> Tensor:
        """Logits (B, Q). Without ``prior`` a mask-prior model samples the mask channel of ``inp``
        (channel 3, bilinear) at the queries: right when ``inp`` is at the query resolution."""
        if self.mask_prior and prior is None:
            grid = coord.flip(-1).unsqueeze(1)
            prior = F.grid_sample(inp[:, 3:4], grid, mode="bilinear", align_corners=False,
                                  padding_mode="border")[:, 0, 0]
        return self.query(self.encode(inp), coord, cell, prior)
