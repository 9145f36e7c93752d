"""`prepare_model`: per-worker inference preparation (BatchNorm folding)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.refine.options import RefineOptions

__all__ = ["prepare_model", "fold_batchnorm"]

_PREPARED_ATTR = "_samsr_bn_folded"


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.detach().clone())


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (registration order of siblings,
    which is the forward order in all models of `pipeline.models`) into the conv, replacing
    the BN by Identity. In place; returns the number of folded pairs. Eval-mode only."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                if conv.out_channels != bn.num_features:
                    continue
                _fold_pair(conv, bn)
                parent._modules[second] = nn.Identity()
                folded += 1
    return folded


def prepare_model(model: nn.Module, options: RefineOptions = RefineOptions()) -> nn.Module:
    """Model ready for `refine` under `options`, in eval mode.

    With `options.fold_bn` this returns a BN-folded copy (the given model is untouched);
    calling it again on the result returns the result itself (idempotent). Without it,
    returns `model` in eval mode.
    """
    model.eval()
    if not options.fold_bn or getattr(model, _PREPARED_ATTR, False):
        return model
    prepared = copy.deepcopy(model)
    fold_batchnorm(prepared)
    setattr(prepared, _PREPARED_ATTR, True)
    return prepared.eval()
