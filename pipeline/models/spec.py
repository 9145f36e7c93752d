"""What each registry model is and takes, so no caller parses names or counts channels.

One `ModelSpec` per registry entry (in the spirit of timm's pretrained configs): the builder,
the input channels (RGB + mask, + 3 proposal colour channels for SAM-SR-v2.1), whether it takes
proposals, the stem key (the first convolution, whose inputs differ between CRM and v2.1), the
input normalisation, the CRM entry whose weights initialise a v2.1 model, and the shipped
default weights (relative to ``pipeline/weights``) if any. Look one up with
`pipeline.models.model_spec(name)`; a built model answers the same through
``CRMNet.takes_proposals``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.models.crm import BASE_CHANNELS, IMAGENET_MEAN, IMAGENET_STD, PROPOSAL_CHANNELS

__all__ = ["ModelSpec", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    backbone: str  # "r50" | "mnv2"
    takes_proposals: bool  # SAM-SR-v2.1: RGB + mask + proposal colour map
    stem_key: str  # state-dict key of the first convolution
    crm_counterpart: str | None = None  # the CRM entry whose weights initialise this v2.1 model
    default_weights: str | None = None  # file in pipeline/weights shipped with the package
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB normalisation (0..1 scale)
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def in_channels(self) -> int:
        return BASE_CHANNELS + (PROPOSAL_CHANNELS if self.takes_proposals else 0)

    @property
    def default_weights_path(self) -> str | None:
        """Absolute path of the shipped weights, or None when the package ships none."""
        return str(WEIGHTS_DIR / self.default_weights) if self.default_weights else None

    @property
    def kind(self) -> str:
        """Human words for error messages: 'a SAM-SR-v2.1 (7-channel)' or 'a CRM (4-channel)'."""
        return (f"a SAM-SR-v2.1 ({self.in_channels}-channel)" if self.takes_proposals
                else f"a CRM ({self.in_channels}-channel)")
