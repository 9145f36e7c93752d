"""``samsr train`` on Ray Train: the data source, the SAM-SR-v2.1 colour-map precompute and the
TorchTrainer wiring, from a validated :class:`pipeline.train.config.TrainJobConfig`.

Ray is reached through ``pipeline.ray_runner.init_ray`` / ``shutdown_ray`` (the one entry all
jobs use). ``run.ray: false`` runs the same loop in this process. Rerunning resumes from the
newest checkpoint in ``run.checkpoint_dir``.
"""

from __future__ import annotations

import glob
import os

from pipeline.train.config import TrainJobConfig, loop_config

__all__ = ["build_source", "check_train", "run_train"]


def check_train(cfg: TrainJobConfig) -> None:
    """What training needs before any work (ValueError naming the key)."""
    from pipeline.models import SPECS

    if cfg.model.name not in SPECS:
        raise ValueError(f"model.name: must be one of {', '.join(sorted(SPECS))} (got {cfg.model.name!r})")
    if not cfg.data.uris and not cfg.data.photos:
        raise ValueError(
            "data.uris: no training data: give data.uris (--data URI) and/or data.photos (--photos)"
        )


def build_source(cfg: TrainJobConfig):
    """The training source from data.uris / data.photos (several are concatenated)."""
    from pipeline.train.data import CompositeSource, ConcatSource, LayoutSource

    d = cfg.data
    parts = []
    suffixes = {k: v for k, v in (("image_suffix", d.image_suffix), ("gt_suffix", d.gt_suffix)) if v}
    for uri in d.uris:
        parts.append(LayoutSource(uri, layout=d.layout, max_pixels=d.max_pixels, **suffixes))
    if d.photos:
        pattern = d.photos
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*")
        photos = sorted(
            p
            for p in glob.glob(pattern, recursive=True)
            if p.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
        )
        parts.append(CompositeSource(photos, d.composites, seed=cfg.optim.seed))
    if not parts:
        raise ValueError(
            "data.uris: no training data: give data.uris (--data URI) and/or data.photos (--photos)"
        )
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def sam_settings(cfg: TrainJobConfig):
    """The colour maps' settings (the cache key) from the ``sam`` section only: the training seed
    (``optim.seed``) does not enter, so another seed reuses the cache."""
    from pipeline.train.sam_cache import SamSettings

    s = cfg.sam
    return SamSettings(
        proposals=s.proposals or ("sam" if s.checkpoint else "regions"),
        model_type=s.model_type,
        checkpoint=s.checkpoint,
        points_per_side=s.points_per_side,
        working_size=s.working_size,
        seed=s.seed,
    )


def _sam_lookup(cfg: TrainJobConfig, source, use_ray: bool):
    """For models that take proposals: precompute (a Ray job) and return the colour-map cache."""
    from pipeline.models import model_spec

    if not model_spec(cfg.model.name).takes_proposals:
        return None
    from pipeline.train.sam_cache import SamColourCache, precompute_colour_maps

    s = cfg.sam
    cache = SamColourCache(s.cache or cfg.run.checkpoint_dir.rstrip("/") + "/sam_cache", sam_settings(cfg))
    precompute_colour_maps(source, cache, use_ray=use_ray, use_gpu=cfg.run.use_gpu)  # the training device
    return cache


def _ray_storage(checkpoint_dir: str) -> str:
    """Ray's own run folder: local checkpoint dirs keep it beside them, remote ones use /tmp."""
    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file://"):
        return "/tmp/samsr-ray-train"
    return os.path.abspath(checkpoint_dir.removeprefix("file://").rstrip("/") + "_ray")


def run_train(cfg: TrainJobConfig) -> dict:
    """Train to the end; returns {"steps": last checkpoint step, "checkpoint_dir", "export"}."""
    from pipeline.train.loop import train_loop

    check_train(cfg)
    loop = loop_config(cfg)
    source = build_source(cfg)
    r = cfg.run
    if not r.ray:
        train_loop({"cfg": loop, "source": source, "sam_lookup": _sam_lookup(cfg, source, use_ray=False)})
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from pipeline.config import RayConfig
        from pipeline.ray_runner import init_ray, shutdown_ray

        ncpu = max(2, int(r.num_workers * r.cpus_per_worker + 0.999) + 1)
        started = init_ray(RayConfig(address=r.address, num_cpus=ncpu))  # local Ray: ncpu CPUs
        try:
            sam = _sam_lookup(cfg, source, use_ray=True)
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={"cfg": loop, "source": source, "sam_lookup": sam},
                torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=r.num_workers,
                    use_gpu=r.use_gpu,
                    resources_per_worker={"CPU": r.cpus_per_worker},
                ),
                run_config=RunConfig(name="samsr-train", storage_path=_ray_storage(r.checkpoint_dir)),
            )
            trainer.fit()
        finally:
            shutdown_ray(started)
    from pipeline.train.checkpoint import list_checkpoints

    done = list_checkpoints(r.checkpoint_dir)
    return {"steps": done[-1][0] if done else 0, "checkpoint_dir": r.checkpoint_dir, "export": r.export}
