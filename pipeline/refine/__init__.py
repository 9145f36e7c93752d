"""Mask refinement with CRM / SAM-SR-v2.1: the official cascade, decoding modes, exact optimisations.

Names are loaded on first use (PEP 562): ``from pipeline.refine import RefineOptions`` does not
import torch, so config validation and ``--print-config`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.refine.options import DECODE_MODES, RefineOptions

__all__ = ["refine", "reflect_pad", "prepare_model", "fold_batchnorm", "RefineOptions", "DECODE_MODES"]

_LAZY = {"refine": "cascade", "reflect_pad": "cascade", "prepare_model": "fold", "fold_batchnorm": "fold"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"pipeline.refine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.refine' has no attribute {name!r}")
