"""Fitting a state dict to a model: prefix stripping, stem growth, strict checks (pure, no I/O).

Files are read and written by the one reader, `pipeline.io.weights` (fsspec, gzip,
``weights_only``); this module only matches tensors to a model and names the first bad key.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.io.weights import OFFICIAL_PREFIX, CheckpointError, strip_prefix

__all__ = ["CheckpointError", "load_weights", "strip_prefix", "interpolate_state_dicts", "OFFICIAL_PREFIX"]

def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str = "<state dict>",
                 grow_stem: str | None = None, what: str = "checkpoint") -> nn.Module:
    """Load `state_dict` (with or without "module.") into `model` strictly.

    ``grow_stem``: the key of the first convolution; a weight there with fewer input channels
    than the model's (a CRM checkpoint for a SAM-SR-v2.1 model) is copied into the first
    channels and the others are zeroed, so the model computes what the source computes.
    Raises CheckpointError starting "``what`` ``source``:" and naming the first missing,
    unexpected or mis-shaped key (in the model's own key order).
    """
    given = strip_prefix(state_dict)
    expected = model.state_dict()
    if grow_stem is not None and grow_stem in given and grow_stem in expected:
        have, want = given[grow_stem], expected[grow_stem]
        if have.dim() == 4 and have.shape[1] < want.shape[1] and have.shape[0] == want.shape[0] \
                and have.shape[2:] == want.shape[2:]:
            grown = torch.zeros(want.shape, dtype=have.dtype)
            grown[:, : have.shape[1]] = have
            given = {**given, grow_stem: grown}
    missing = [k for k in expected if k not in given]
    if missing:
        raise CheckpointError(f"{what} {source}: missing key {missing[0]!r} ({len(missing)} missing; "
                              "wrong model type for this checkpoint?)")
    for key, value in expected.items():
        if tuple(given[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{what} {source}: key {key!r} has shape {tuple(given[key].shape)}, "
                f"model expects {tuple(value.shape)} (wrong model type for this checkpoint?)"
            )
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{what} {source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    model.load_state_dict(given, strict=True)
    return model


def interpolate_state_dicts(a: dict[str, Tensor], b: dict[str, Tensor], alpha: float,
                            sources: tuple[str, str] = ("a", "b")) -> dict[str, Tensor]:
    """``(1 - alpha) * a + alpha * b`` for every floating-point tensor of two state dicts of the
    same model (with or without "module."; the result has none); integer tensors (BatchNorm's
    step counters) are taken from ``b``.

    Weight-space interpolation between a model and its fine-tuned descendant (WiSE-FT, Wortsman et
    al. 2022) or two runs from one init (a "model soup"): both must come from the same init for the
    average to be a good model. Raises CheckpointError naming the first key only one side has, or
    whose shapes differ (``sources`` name the two sides).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    sa, sb = strip_prefix(a), strip_prefix(b)
    for x, y, name in ((sa, sb, sources[0]), (sb, sa, sources[1])):
        only = [k for k in x if k not in y]
        if only:
            raise CheckpointError(f"checkpoint {name}: key {only[0]!r} is not in the other checkpoint "
                                  f"({len(only)} such keys; not the same model type)")
    out: dict[str, Tensor] = {}
    for key, va in sa.items():
        vb = sb[key]
        if tuple(va.shape) != tuple(vb.shape):
            raise CheckpointError(f"checkpoint {sources[1]}: key {key!r} has shape {tuple(vb.shape)}, "
                                  f"{sources[0]} has {tuple(va.shape)}")
        if va.is_floating_point() and vb.is_floating_point():
            mixed = (1.0 - alpha) * va.double() + alpha * vb.double()
            out[key] = mixed.to(va.dtype)
        else:
            out[key] = vb.clone()
    return out
