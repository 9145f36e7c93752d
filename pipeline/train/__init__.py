"""Training the refiner: composites with exact ground truth, coarse-mask synthesis, CRM's loss,
the per-worker loop (Ray Train or plain), fsspec checkpoints, SAM colour-map cache, held-out
evaluation. Entry point: ``python -m jobs.train`` (``samsr train``)."""

from pipeline.train.checkpoint import load_latest, save_train_state
from pipeline.train.loop import TrainConfig, init_for_training, init_from_checkpoint, train_loop
from pipeline.train.loss import LossWeights, refine_loss

__all__ = [
    "TrainConfig",
    "train_loop",
    "init_for_training",
    "init_from_checkpoint",
    "LossWeights",
    "refine_loss",
    "save_train_state",
    "load_latest",
]
