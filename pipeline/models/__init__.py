"""Refiner models: CRM and SAM-SR-v2.1 (ResNet-50 and light MobileNetV2 variants)."""

from pipeline.models.checkpoint import (
    CheckpointError,
    checkpoint_hash,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from pipeline.models.crm import IMAGENET_MEAN, IMAGENET_STD, CRMNet, make_coord, make_input
from pipeline.models.registry import MODELS, SPECS, STEM_KEYS, build_model, expand_stem, model_spec
from pipeline.models.spec import ModelSpec

__all__ = [
    "MODELS",
    "SPECS",
    "ModelSpec",
    "model_spec",
    "STEM_KEYS",
    "build_model",
    "expand_stem",
    "CRMNet",
    "make_coord",
    "make_input",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "checkpoint_hash",
]
