"""``samsr train``'s typed job config: YAML (``configs/train.yaml`` documents every key) plus
``--set key.path=value`` overrides, validated into frozen dataclasses with the same rules as the
refine config (``pipeline.config``): an unknown key or a bad value is an error naming the key,
before any work starts.

Sections: ``data`` (what to train on), ``model``, ``optim`` (the recipe), ``run`` (checkpoints,
workers, Ray) and ``sam`` (the proposal colour maps of SAM-SR-v2.1 models).
:func:`loop_config` turns it into the loop's :class:`pipeline.train.loop.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config.typed import apply_overrides, build_section, read_yaml
from pipeline.config.typed import checked as _f
from pipeline.config.typed import non_negative as _non_negative
from pipeline.config.typed import nonempty as _nonempty
from pipeline.config.typed import positive as _positive
from pipeline.config.typed import unit as _unit

__all__ = [
    "TrainJobConfig",
    "TrainDataConfig",
    "TrainModelConfig",
    "OptimConfig",
    "TrainRunConfig",
    "TrainSamConfig",
    "train_config_from_dict",
    "load_train_config",
    "loop_config",
]


@dataclass(frozen=True)
class TrainDataConfig:
    uris: list[str] = field(default_factory=list)  # datasets with ground truth, any input layout
    layout: Literal["prefix", "webdataset", "list"] = "prefix"
    image_suffix: str | None = None
    gt_suffix: str | None = None
    photos: str | None = None  # folder or glob: composites generated on the fly
    composites: int = _f(2000, _positive)  # on-the-fly composites per epoch
    max_pixels: int = _f(4096 * 4096, _positive)  # decode guard per image


@dataclass(frozen=True)
class TrainModelConfig:
    name: str = "crm_mnv2"
    pretrained_backbone: bool = False  # MobileNetV2 encoder from ImageNet weights (light models)
    init_checkpoint: str | None = None  # start from these weights (CRM into v2.1: SAM channels zeroed)
    fresh_init: bool = True  # without init_checkpoint: orthogonal extra stem channels, Kaiming decoder MLP


def _loss_weights(v: str) -> str | None:
    from pipeline.train.loss import LossWeights

    try:
        LossWeights.parse(v)
    except ValueError as e:
        return str(e)
    return None


def _jitter_kinds(v: list[str]) -> str | None:
    from pipeline.train.perturb import COARSE_KINDS

    bad = [k for k in v if k not in COARSE_KINDS]
    if bad or not v:
        return f"must be a non-empty list of {list(COARSE_KINDS)}"
    return None


@dataclass(frozen=True)
class OptimConfig:
    steps: int = _f(1000, _positive)
    batch_size: int = _f(8, _positive)  # crops per worker per step
    crop: int = _f(224, _positive)
    patch: int = _f(64, _non_negative)  # dense query windows per crop; 0: every crop pixel
    patches: int = _f(2, _positive)
    lr: float = _f(2.25e-4, _positive)
    lr_milestones: list[int] | None = None  # null: 50% and 83% of steps
    lr_gamma: float = _f(0.1, _positive)
    loss_weights: str = _f("0,1,1,5", _loss_weights)  # bce,l1,mse,grad (CRM's 0,1,1,5)
    input_scale_min: float = _f(0.125, _unit)  # encode the crop downscaled by U(min, 1)
    p_input_scale: float = _f(0.5, _unit)
    p_lowres: float = _f(0.3, _unit)
    p_annotation: float = _f(0.35, _unit)
    p_identity: float = _f(0.1, _unit)
    p_truth_jitter: float = _f(0.0, _unit)  # truths given a hand-drawn-like +-1 px boundary (jitter_boundary)
    truth_jitter_kinds: list[str] = field(  # the coarse kinds whose truths p_truth_jitter may move
        default_factory=lambda: ["identity", "annotation", "perturbed"], metadata={"check": _jitter_kinds})
    p_truth_offset: float = _f(0.0, _unit)  # truths whose line is moved truth_offset px outward (move_line)
    truth_offset: int = _f(1, _positive)  # whole pixels outward (people draw ~1 px outside the edge)
    weight_decay: float = _f(1e-4, _non_negative)
    dropout: float | None = _f(0.0, _unit)  # fusion dropout; null: the model's own (0.5 in CRM)
    time_budget_min: float | None = _f(None, _positive)  # train about this long (steps shrink to fit)
    seed: int = _f(0, _non_negative)


@dataclass(frozen=True)
class TrainRunConfig:
    checkpoint_dir: str = _f(None, _nonempty)  # checkpoints + log.jsonl (any fsspec URL); required
    export: str | None = None  # final weights (official key naming)
    log_every: int = _f(10, _positive)
    ckpt_every: int = _f(100, _positive)
    keep_checkpoints: int = _f(3, _positive)
    num_workers: int = _f(1, _positive)  # Ray Train workers (DDP ranks)
    cpus_per_worker: float = _f(1.0, _positive)
    use_gpu: bool = False  # one GPU per worker, nccl
    threads: int = _f(0, _non_negative)  # torch threads per worker; 0: Ray's default
    loader_workers: int = _f(0, _non_negative)
    epoch_repeats: int = _f(1, _positive)
    address: str | None = None  # Ray address; null: $RAY_ADDRESS or a local Ray
    ray: bool = True  # false: the same loop in this process (no Ray Train)


@dataclass(frozen=True)
class TrainSamConfig:
    proposals: Literal["sam", "regions"] | None = None  # null: sam with a checkpoint, else regions
    model_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    checkpoint: str | None = None
    cache: str | None = None  # colour-map cache; null: <checkpoint_dir>/sam_cache
    points_per_side: int = _f(32, _positive)
    working_size: int = _f(1024, _positive)
    seed: int = _f(0, _non_negative)  # colour seed of the maps (and random SAM weights), as refine's sam.seed


_SECTIONS = {
    "data": TrainDataConfig,
    "model": TrainModelConfig,
    "optim": OptimConfig,
    "run": TrainRunConfig,
    "sam": TrainSamConfig,
}


@dataclass(frozen=True)
class TrainJobConfig:
    data: TrainDataConfig
    model: TrainModelConfig
    optim: OptimConfig
    run: TrainRunConfig
    sam: TrainSamConfig


def train_config_from_dict(data: Mapping[str, Any]) -> TrainJobConfig:
    """Validate a mapping (as loaded from YAML) into a TrainJobConfig (ValueError names the key)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config: must be a mapping (got {type(data).__name__})")
    for key in data:
        if key not in _SECTIONS:
            raise ValueError(f"{key}: unknown key (known: {', '.join(_SECTIONS)})")
    sections = {name: build_section(cls, data.get(name), name) for name, cls in _SECTIONS.items()}
    cfg = TrainJobConfig(**sections)
    if cfg.optim.lr_milestones is not None and any(m < 1 for m in cfg.optim.lr_milestones):
        raise ValueError(f"optim.lr_milestones: steps must be >= 1 (got {cfg.optim.lr_milestones})")
    if cfg.optim.crop < 32:
        raise ValueError(f"optim.crop: must be >= 32 (got {cfg.optim.crop})")
    return cfg


def load_train_config(path: str | None, overrides: Iterable[tuple[list[str], Any]] = ()) -> TrainJobConfig:
    """Read ``path`` (or start empty), apply ``--set`` overrides, validate."""
    data = read_yaml(path) if path else {}
    return train_config_from_dict(apply_overrides(data, overrides))


def loop_config(cfg: TrainJobConfig):
    """The loop's TrainConfig (primitives stored in checkpoints) from the job config."""
    from pipeline.train.loop import TrainConfig
    from pipeline.train.loss import LossWeights

    o, r, m = cfg.optim, cfg.run, cfg.model
    return TrainConfig(
        checkpoint_dir=r.checkpoint_dir,
        model=m.name,
        pretrained_backbone=m.pretrained_backbone,
        init_checkpoint=m.init_checkpoint,
        steps=o.steps,
        batch_size=o.batch_size,
        lr=o.lr,
        lr_milestones=None if o.lr_milestones is None else tuple(o.lr_milestones),
        lr_gamma=o.lr_gamma,
        loss_weights=LossWeights.parse(o.loss_weights),
        crop=o.crop,
        patch=o.patch,
        patches=o.patches,
        p_lowres=o.p_lowres,
        p_annotation=o.p_annotation,
        p_identity=o.p_identity,
        p_truth_jitter=o.p_truth_jitter,
        truth_jitter_kinds=tuple(o.truth_jitter_kinds),
        p_truth_offset=o.p_truth_offset,
        truth_offset=o.truth_offset,
        weight_decay=o.weight_decay,
        input_scale_range=(o.input_scale_min, 1.0),
        p_input_scale=o.p_input_scale,
        log_every=r.log_every,
        ckpt_every=r.ckpt_every,
        keep_checkpoints=r.keep_checkpoints,
        seed=o.seed,
        loader_workers=r.loader_workers,
        threads=r.threads,
        use_gpu=r.use_gpu,
        export=r.export,
        fresh_init=m.fresh_init,
        dropout=o.dropout,
        epoch_repeats=r.epoch_repeats,
        time_budget_s=None if o.time_budget_min is None else 60.0 * o.time_budget_min,
    )


def train_config_to_dict(cfg: TrainJobConfig) -> dict:
    return dataclasses.asdict(cfg)
