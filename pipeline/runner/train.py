"""``samsr train`` on Ray Train: the SAM-SR-v2.1 colour-map precompute as Ray tasks and the
TorchTrainer wiring, from a validated :class:`pipeline.train.config.TrainJobConfig`.

Ray is reached through ``pipeline.runner.cluster.init_ray`` / ``shutdown_ray`` (the one entry all
jobs use). ``run.ray: false`` runs the same loop in this process. Rerunning resumes from the
newest checkpoint in ``run.checkpoint_dir``. What is checked and built before any work is in
``pipeline.train.job``; the loop itself in ``pipeline.train.loop``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pipeline.runner.cluster import cluster_resources, init_ray, shutdown_ray
from pipeline.train.config import TrainJobConfig, loop_config
from pipeline.train.job import build_source, check_train, sam_settings

__all__ = ["run_train", "ray_train_worker"]


def _call(fill, part: list[int]) -> tuple[int, int]:
    return fill(part)


def _ray_map_parts(fill, parts: list[list[int]], resources: dict[str, float]) -> list[tuple[int, int]]:
    """Each part of the colour-map precompute as one Ray task asking ``resources``."""
    import ray

    task = ray.remote(**resources)(_call)
    return ray.get([task.remote(fill, p) for p in parts])


def _sam_lookup(cfg: TrainJobConfig, source, use_ray: bool):
    """For models that take proposals: precompute (Ray tasks, one per CPU of the cluster, or per GPU
    with ``run.use_gpu`` and SAM; or in this process) and return the colour-map cache."""
    from pipeline.models import model_spec

    if not model_spec(cfg.model.name).takes_proposals:
        return None
    from pipeline.train.sam_cache import SamColourCache, precompute_colour_maps, task_resources

    s = cfg.sam
    cache = SamColourCache(s.cache or cfg.run.checkpoint_dir.rstrip("/") + "/sam_cache", sam_settings(cfg))
    resources = task_resources(cache.settings, 1.0, cfg.run.use_gpu)  # SAM on the training device
    device = "cuda" if resources["num_gpus"] else "cpu"
    if not use_ray:
        precompute_colour_maps(source, cache, device=device)
        return cache
    cluster = cluster_resources()
    if resources["num_gpus"] and cluster.get("GPU", 0) < 1:
        raise ValueError("run.use_gpu: the SAM colour-map precompute needs a GPU, the Ray cluster has none")
    per = "GPU" if resources["num_gpus"] else "CPU"
    parts = max(1, int(cluster.get(per, 1) // max(resources["num_gpus"] or resources["num_cpus"], 1e-3)))
    precompute_colour_maps(source, cache, functools.partial(_ray_map_parts, resources=resources), parts=parts,
                           device=device)
    return cache


def _ray_storage(checkpoint_dir: str) -> str:
    """Ray's own run folder: local checkpoint dirs keep it beside them, remote ones use /tmp."""
    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file://"):
        return "/tmp/samsr-ray-train"
    return os.path.abspath(checkpoint_dir.removeprefix("file://").rstrip("/") + "_ray")


def ray_train_worker(config: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer: :func:`pipeline.train.loop.train_loop` with
    Ray Train's rank, world size, DDP wrap (``prepare_model``) and metrics report."""
    import ray.train
    import ray.train.torch

    from pipeline.train.loop import Workers, train_loop

    ctx = ray.train.get_context()
    workers = Workers(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                      wrap=ray.train.torch.prepare_model, report=ray.train.report)
    train_loop({**config, "workers": workers})


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

        ncpu = max(2, int(r.num_workers * r.cpus_per_worker + 0.999) + 1)
        started = init_ray(RayConfig(address=r.address, num_cpus=ncpu))  # local Ray: ncpu CPUs
        try:
            sam = _sam_lookup(cfg, source, use_ray=True)
            trainer = TorchTrainer(
                ray_train_worker,
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
