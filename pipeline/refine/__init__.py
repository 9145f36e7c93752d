"""Mask refinement with CRM / SAM-SR-v2.1: the official cascade, decoding modes, exact optimisations."""

from pipeline.refine.cascade import refine, reflect_pad
from pipeline.refine.fold import fold_batchnorm, prepare_model
from pipeline.refine.options import DECODE_MODES, RefineOptions

__all__ = ["refine", "reflect_pad", "prepare_model", "fold_batchnorm", "RefineOptions", "DECODE_MODES"]
