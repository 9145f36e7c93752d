"""Refiner models: CRM and SAM-SR-v2.1 (ResNet-50 and light MobileNetV2 variants).

Checkpoint files are read and written by `pipeline.io.weights` (read_state_dict,
save_checkpoint, checkpoint_hash); `build_model(name, checkpoint)` reads through it.
"""

from pipeline.models.checkpoint import CheckpointError, load_weights
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
    "load_weights",
]
