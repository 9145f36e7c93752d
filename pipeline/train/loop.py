"""The training loop, run per worker by Ray Train's ``TorchTrainer`` or in a plain process.

``train_loop({"cfg": TrainConfig, "source": <source>, "sam_lookup": <callable or None>,
"workers": Workers or None})`` builds the model, resumes from the newest checkpoint under
``cfg.checkpoint_dir`` if any, and trains to ``cfg.steps`` optimizer steps with
:func:`pipeline.train.step.train_step`. With several workers (``pipeline.runner.train`` passes
Ray Train's :class:`Workers`) the model is wrapped in DDP (``prepare_model``: gloo on CPU, nccl on
GPU) and each worker reads its own shard of every epoch. No Ray here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.train.checkpoint import load_latest, save_train_state
from pipeline.train.data import CropDataset
from pipeline.train.fastconv import use_space_to_batch
from pipeline.train.loss import LossWeights
from pipeline.train.perturb import COARSE_KINDS
from pipeline.train.step import train_step

__all__ = ["TrainConfig", "Workers", "train_loop", "init_from_checkpoint", "init_for_training",
           "freeze_unused", "lr_milestones", "fit_steps", "scaled_milestones", "replan"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the loop needs besides the data source (all primitives: stored in checkpoints)."""

    checkpoint_dir: str
    model: str = "crm_mnv2"
    pretrained_backbone: bool = True
    init_checkpoint: str | None = None
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2.25e-4
    weight_decay: float = 1e-4
    lr_milestones: tuple[int, ...] | None = None  # default: 50% and 83% of steps (CRM's 22.5k/37.5k of 45k)
    lr_gamma: float = 0.1
    loss_weights: LossWeights = field(default_factory=LossWeights)
    crop: int = 224
    patch: int = 64  # dense query windows per crop (0 = query every crop pixel)
    patches: int = 2
    input_scale_range: tuple[float, float] = (0.125, 1.0)  # the cascade encodes at 1/8 .. 1
    p_input_scale: float = 0.5
    iou_range: tuple[float, float] = (0.75, 1.0)
    p_lowres: float = 0.3
    p_annotation: float = 0.35  # coarse kinds (pipeline.train.perturb.synth_coarse)
    p_identity: float = 0.1
    p_truth_jitter: float = 0.0  # share of truths given a hand-drawn-like +-1 px boundary (jitter_boundary)
    truth_jitter_kinds: tuple[str, ...] = COARSE_KINDS  # the coarse kinds whose truths may be jittered
    p_truth_offset: float = 0.0  # share of truths whose line is moved truth_offset px outward (move_line)
    truth_offset: int = 1
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    loader_workers: int = 0
    threads: int = 0  # torch threads per worker; 0 = leave as is
    use_gpu: bool = False
    space_to_batch: bool = True  # exact faster dilated convs on CPU (pipeline.train.fastconv)
    fresh_init: bool = True  # from-ImageNet start: orthogonal mask/SAM stem channels, Kaiming decoder MLP
    dropout: float | None = 0.0  # training dropout of the fusion (None: the model's own, 0.5 in CRM)
    export: str | None = None  # final weights (official key naming) written here by rank 0
    time_budget_s: float | None = None  # stop after this long; steps and milestones fit it (replan)
    epoch_repeats: int = 1  # an epoch visits every sample this often (other crops): fewer loader restarts
    calibration_steps: int = 50  # steps timed before the budget first sets the run's length

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.crop < 32:
            raise ValueError(f"TrainConfig: steps ({self.steps}), batch_size ({self.batch_size}) "
                             "must be >= 1 "
                             f"and crop ({self.crop}) >= 32")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr}")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError("TrainConfig: log_every and ckpt_every must be >= 1")
        if self.epoch_repeats < 1:
            raise ValueError(f"TrainConfig: epoch_repeats must be >= 1, got {self.epoch_repeats}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"TrainConfig: time_budget_s must be > 0, got {self.time_budget_s}")


def lr_milestones(cfg: TrainConfig) -> list[int]:
    """Step-decay milestones: cfg.lr_milestones or [steps/2, 5*steps/6]."""
    if cfg.lr_milestones is not None:
        return sorted(int(m) for m in cfg.lr_milestones)
    return [max(1, cfg.steps // 2), max(2, cfg.steps * 5 // 6)]


def fit_steps(cfg: TrainConfig, step: int, seconds_left: float, s_per_step: float) -> tuple[int, list[int]]:
    """The run's length under a time budget: (steps, lr milestones).

    From ``step``, with ``seconds_left`` and the measured ``s_per_step``, the run ends at
    min(cfg.steps, step + what fits in 97% of the time left); the milestones of
    :func:`lr_milestones` are scaled by steps / cfg.steps, so the decay keeps its place in the run.
    """
    fits = step + int(0.97 * max(0.0, seconds_left) / max(s_per_step, 1e-9))
    steps = max(step + 1, min(cfg.steps, fits))
    return steps, scaled_milestones(cfg, steps)


def scaled_milestones(cfg: TrainConfig, steps: int) -> list[int]:
    """:func:`lr_milestones` scaled by ``steps / cfg.steps`` (a run cut to ``steps``)."""
    scale = steps / cfg.steps
    return sorted({max(1, int(m * scale)) for m in lr_milestones(cfg)})


def replan(cfg: TrainConfig, step: int, seconds_left: float, s_per_step: float,
           milestones: list[int], first: bool = False) -> tuple[int, list[int]] | None:
    """A time-budgeted run's new (steps, lr milestones) from the rate just measured, or None to
    keep the current plan. The first plan (``first``) is always taken; later ones only while the
    lr decay has not begun under either plan (``step`` before every current and new milestone), so
    a run whose first timing was slowed by something else (a benchmark, a cold loader, the page
    cache) gets its length back, and a run that slowed down is cut before its decay."""
    steps, miles = fit_steps(cfg, step, seconds_left, s_per_step)
    if first or all(step < m for m in milestones + miles):
        return steps, miles
    return None


def init_from_checkpoint(model: nn.Module, state: dict[str, torch.Tensor],
                         source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` (`pipeline.models.load_weights`, strict): a stem with fewer
    input channels (a CRM checkpoint into a SAM-SR-v2.1 model) is copied into the first channels
    and the new channels are zeroed, so the model computes exactly what the source computes.
    Other mismatches raise CheckpointError (a ValueError) naming ``source`` and the key."""
    from pipeline.models import STEM_KEYS, load_weights

    own = model.state_dict()
    stem = next((k for k in STEM_KEYS.values() if k in own), None)
    load_weights(model, state, source, grow_stem=stem)


def freeze_unused(model: nn.Module) -> list[str]:
    """Stop gradients for the parameters training never uses, so DDP's reducer does not wait for
    them: the ResNet encoders' ``layer4`` (built so official checkpoints load strictly, never run
    by the refiner: ``CRMNet.encode`` skips it). Without this, 2+ DDP workers fail on the second
    step ("Expected to have finished reduction in the prior iteration"). The parameters stay in
    the state dict; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if ".layer4." in f".{name}":
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def init_for_training(model: nn.Module, seed: int = 0) -> None:
    """Initialise a model whose backbone came from ImageNet (not from a refiner checkpoint).

    - the stem's input channels beyond RGB (mask, SAM colours) get an orthogonal init, as
      CascadePSP / CRM do when growing the ImageNet conv1 (a zero init hides the mask from the
      features);
    - the decoder MLP gets Kaiming-normal weights and zero biases: PyTorch's default Linear init
      shrinks the signal ~3x per layer, and the 5-layer head then starts (and, measured here,
      stays for 100+ steps) at a constant output that ignores its input;
    - for a mask-prior model (``mask_prior`` > 0) the MLP's last layer starts at zero, so the
      untrained model returns exactly its incoming mask (the residual starts at the identity).
    """
    g = torch.Generator().manual_seed(seed)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        if stem.in_channels > 3:
            extra = torch.empty(stem.out_channels, stem.in_channels - 3, *stem.kernel_size)
            nn.init.orthogonal_(extra.view(stem.out_channels, -1), generator=g)
            stem.weight[:, 3:] = extra
        linears = [m for m in model.imnet.modules() if isinstance(m, nn.Linear)]
        for m in linears:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            nn.init.zeros_(m.bias)
        if getattr(model, "mask_prior", 0.0):
            nn.init.zeros_(linears[-1].weight)


class _EpochSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded permutation of the epoch, starting after ``skip`` items."""

    def __init__(self, n: int, seed: int, epoch: int, rank: int, world: int, skip: int) -> None:
        perm = np.random.default_rng([seed, epoch, 99]).permutation(n)
        self.idx = perm[rank::world][skip:].tolist()

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


@dataclass(frozen=True)
class Workers:
    """How this process takes part in training: its rank and the world size, the DDP wrap of the
    model and where step metrics are reported. The default is one process on its own;
    ``pipeline.runner.train`` gives Ray Train's (``prepare_model``, ``report``)."""

    rank: int = 0
    world: int = 1
    wrap: Callable[[nn.Module], nn.Module] | None = None
    report: Callable[[dict], None] | None = None


def _log(msg: dict[str, Any]) -> None:
    print("[train] " + json.dumps(msg), flush=True)


def train_loop(config: dict[str, Any]) -> None:
    """Train per ``config["cfg"]`` on ``config["source"]`` (see module docstring)."""
    from pipeline.io.weights import read_state_dict, save_checkpoint
    from pipeline.models import build_model

    cfg: TrainConfig = config["cfg"]
    workers: Workers = config.get("workers") or Workers()
    rank, world = workers.rank, workers.world
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    if cfg.use_gpu and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.use_gpu: no CUDA device is visible to this worker")
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # training only: the decoder MLP's matmuls
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()

    model = build_model(cfg.model, pretrained_backbone=cfg.pretrained_backbone)
    if cfg.init_checkpoint:
        init_from_checkpoint(model, read_state_dict(cfg.init_checkpoint), cfg.init_checkpoint)
    elif cfg.fresh_init:
        init_for_training(model, cfg.seed)
    if cfg.space_to_batch and device.type == "cpu":  # a CPU-only speed-up (same function)
        use_space_to_batch(model)
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = cfg.dropout
    model.train()
    model.to(device)  # before the optimizer: its state then lives beside the parameters
    freeze_unused(model)  # before DDP (prepare_model): it must not wait for gradients never computed
    # every parameter, frozen ones included (Adam skips those without gradients): resumable as before
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(cfg), gamma=cfg.lr_gamma)
    step, log = 0, []
    state = load_latest(cfg.checkpoint_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, log = int(state["step"]), list(state.get("log", []))
        scheduler.milestones = Counter(lr_milestones(cfg))  # this run's schedule (steps may have changed)
        if rank == 0:
            _log({"event": "resumed", "step": step, "checkpoint_dir": cfg.checkpoint_dir})
    core = model
    if workers.wrap is not None:  # DDP (Ray Train's prepare_model(model))
        model = workers.wrap(model)
        core = getattr(model, "module", model)

    dataset = CropDataset(config["source"], crop=cfg.crop, seed=cfg.seed, iou_range=cfg.iou_range,
                          length=len(config["source"]) * cfg.epoch_repeats,
                          p_lowres=cfg.p_lowres, p_annotation=cfg.p_annotation, p_identity=cfg.p_identity,
                          p_truth_jitter=cfg.p_truth_jitter, truth_jitter_kinds=cfg.truth_jitter_kinds,
                          p_truth_offset=cfg.p_truth_offset, truth_offset=cfg.truth_offset,
                          sam_lookup=config.get("sam_lookup"))
    per_epoch = max(1, len(dataset) // (cfg.batch_size * world))
    t0, seen0 = time.time(), step
    total = cfg.steps
    calibrate_at = step + max(2, cfg.calibration_steps) if cfg.time_budget_s else None
    warm_at = step + max(1, cfg.calibration_steps // 5)  # the rate is timed after warm-up steps
    refit_every = 4 * max(2, cfg.calibration_steps)  # re-timed windows until the lr decay begins
    window, miles = (warm_at, 0.0), lr_milestones(cfg)
    while step < total:
        epoch, skip = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        sampler = _EpochSampler(len(dataset), cfg.seed, epoch, rank, world, skip * cfg.batch_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.loader_workers, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if cfg.loader_workers else None)
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            rng = np.random.default_rng([cfg.seed, step, 5])
            scale = float(rng.uniform(*cfg.input_scale_range)) if rng.random() < cfg.p_input_scale else 1.0
            parts = train_step(model, optimizer, batch, cfg.loss_weights, scale, cfg.patch, cfg.patches, rng)
            scheduler.step()
            step += 1
            if step == warm_at:
                window = (step, time.time())
            if calibrate_at is not None and step >= calibrate_at and (step - calibrate_at) % refit_every == 0:
                now = time.time()
                rate = (now - window[1]) / (step - window[0])
                window = (step, now)
                plan = replan(cfg, step, cfg.time_budget_s - (now - t_start), rate, miles,
                              first=step == calibrate_at)
                fit = _agree(-1 if plan is None else plan[0], device, world)  # rank 0 decides
                if fit > 0 and (fit, scaled_milestones(cfg, fit)) != (total, miles):
                    total, miles = fit, scaled_milestones(cfg, fit)
                    scheduler.milestones = Counter(miles)
                    if rank == 0:
                        _log({"event": "time_budget", "steps": total, "lr_milestones": miles,
                              "s_per_step": rate})
            if cfg.time_budget_s and step % cfg.log_every == 0 and step < total:
                over = time.time() - t_start > cfg.time_budget_s  # the estimate was off: stop here
                total = _agree(step if over else total, device, world)
            if step % cfg.log_every == 0 or step == total:
                rec = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **parts,
                       "s_per_step": (time.time() - t0) / max(1, step - seen0), "time": time.time()}
                log.append(rec)
                if rank == 0:
                    _log(rec)
                if workers.report is not None:
                    workers.report({k: v for k, v in rec.items() if isinstance(v, (int, float))})
            if rank == 0 and (step % cfg.ckpt_every == 0 or step == total):
                save_train_state(cfg.checkpoint_dir, {
                    "step": step, "model": core.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "log": log, "config": _plain(cfg)},
                    keep=cfg.keep_checkpoints)
            if step >= total:
                break
    if rank == 0 and cfg.export:
        save_checkpoint(core, cfg.export)
        _log({"event": "exported", "uri": cfg.export, "step": step})


def _agree(value: int, device: torch.device, world: int) -> int:
    """Rank 0's value on every rank (DDP ranks must stop at the same step)."""
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def _plain(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d))
