"""The model actors: the refine, relabel and proposal stages, each loading its model once.

Ray Data runs these classes as actor pools (``pipeline.runner.refine``, ``pipeline.runner.relabel``);
``samsr benchmark pipeline`` / ``trust`` call the very same objects in a bare Python loop. Ray is
asked only who this worker is (node id, GPUs given), through ``pipeline.runner.cluster``.

The constructor keyword arguments of a job come from :func:`refiner_kwargs` /
:func:`relabel_kwargs` / :func:`proposal_kwargs`, so the Ray pipeline and the bare loop build
identical workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.refine.loaded import LoadedRefiner, accept_kwargs, refine_options, resolve_device
from pipeline.runner.cluster import ray_gpu_ids, ray_node_id
from pipeline.runner.progress import WorkBeat, beat_period
from pipeline.stages import refine_batch, sam_batch

__all__ = ["RefinerWorker", "RelabelWorker", "ProposalWorker", "refiner_kwargs", "relabel_kwargs",
           "proposal_kwargs"]


class RefinerWorker:
    """The refine stage: :func:`pipeline.stages.refine_batch` with a
    :class:`pipeline.refine.loaded.LoadedRefiner`."""

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 soft: bool, accept: dict | None = None, beacon: Any = None, beat_s: float = 15.0) -> None:
        self.refiner = LoadedRefiner(model_name, checkpoint, options, device, threads, accept, ray_gpu_ids())
        self.soft = soft
        self.node = ray_node_id()
        _report_progress(beacon, beat_s)

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return refine_batch(batch, refine_fn=self.refiner, soft=self.soft, node=self.node)


class RelabelWorker:
    """The relabel stage: :func:`pipeline.relabel.stages.relabel_refine_batch` (every object of an
    image in its own window) with a :class:`pipeline.refine.loaded.LoadedRefiner`."""

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 output_prefix: str, static: dict, rule: dict, scale: float | None,
                 ignore: int | None, accept: dict | None = None, beacon: Any = None,
                 beat_s: float = 15.0) -> None:
        from pipeline.relabel.crops import CropRule

        self.refiner = LoadedRefiner(model_name, checkpoint, options, device, threads, accept, ray_gpu_ids())
        self.node = ray_node_id()
        _report_progress(beacon, beat_s)
        self.kwargs = dict(output_prefix=output_prefix, static=static, rule=CropRule(**rule), scale=scale,
                           ignore=ignore)

    def __call__(self, batch: dict) -> dict:
        import torch

        from pipeline.relabel.stages import relabel_refine_batch

        with torch.inference_mode():
            return relabel_refine_batch(batch, refine_fn=self.refiner, node=self.node, **self.kwargs)


class ProposalWorker:
    """The proposal stage (samsr methods): SAM's automatic mask generator or ``regions``,
    through :func:`pipeline.stages.sam_batch`. SAM's image encoder runs under autocast when
    ``precision`` (``sam.precision``) resolves to bf16 / fp16 on the device (the rest of the
    generator stays float32: `FastMaskGenerator`'s ``precision``)."""

    def __init__(self, proposals: str, regions: dict, model_type: str, checkpoint: str | None,
                 generator: dict, device: str, threads: int, method: str, working_size: int, seed: int,
                 v1: dict, precision: str = "fp32") -> None:
        import torch

        from pipeline.refine.options import resolve_precision

        torch.set_num_threads(threads)
        if proposals == "regions":
            from pipeline.sam.regions import RegionGenerator, RegionSettings

            self.generator = RegionGenerator(RegionSettings(**regions))
        else:
            from pipeline.sam import FastMaskGenerator, build_sam

            dev = resolve_device(device, ray_gpu_ids())
            sam = build_sam(model_type, checkpoint, device=dev)
            self.generator = FastMaskGenerator(sam, precision=resolve_precision(precision, dev), **generator)
        self.kwargs = dict(method=method, working_size=working_size, seed=seed, v1_kwargs=v1)

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return sam_batch(batch, generator=self.generator, **self.kwargs)


def _report_progress(beacon: Any, beat_s: float) -> None:
    """Start this worker's :class:`pipeline.runner.progress.WorkBeat` to ``beacon`` (None: a bare
    loop, nothing to report to)."""
    if beacon is not None:
        WorkBeat(beacon.beat.remote, beat_s).start()


def refiner_kwargs(cfg, threads: int, beacon: Any = None) -> dict[str, Any]:
    """:class:`RefinerWorker` constructor arguments of a refine job (``beacon``: the job's
    progress beacon, None in a bare loop)."""
    return dict(model_name=cfg.model.name, checkpoint=cfg.model.checkpoint, options=refine_options(cfg),
                device=cfg.refine.device, threads=threads, soft=cfg.output.soft, accept=accept_kwargs(cfg),
                beacon=beacon, beat_s=beat_period(cfg.ray.stall_timeout_s))


def relabel_kwargs(cfg, threads: int, static: dict, beacon: Any = None) -> dict[str, Any]:
    """:class:`RelabelWorker` constructor arguments of a relabel job."""
    r = cfg.relabel
    return dict(model_name=cfg.model.name, checkpoint=cfg.model.checkpoint, options=refine_options(cfg),
                device=cfg.refine.device, threads=threads, output_prefix=cfg.output.prefix, static=static,
                rule={"margin_ratio": r.margin_ratio, "min_margin": r.min_margin, "min_size": r.min_size},
                scale=r.scale, ignore=r.ignore, accept=accept_kwargs(cfg),
                beacon=beacon, beat_s=beat_period(cfg.ray.stall_timeout_s))


def proposal_kwargs(cfg, threads: int, v1: bool = True) -> dict[str, Any]:
    """:class:`ProposalWorker` constructor arguments of a job (``v1=False``: no SAM-SR-v1 gates,
    the relabel job)."""
    s = cfg.sam
    generator = dict(points_per_side=s.points_per_side, points_per_batch=s.points_per_batch,
                     pred_iou_thresh=s.pred_iou_thresh, stability_score_thresh=s.stability_score_thresh,
                     box_nms_thresh=s.box_nms_thresh, reassociate=s.reassociate)
    gates = {k: v for k, v in dataclasses.asdict(cfg.v1).items() if v is not None} if v1 else {}
    return dict(proposals=s.proposals, regions=dataclasses.asdict(cfg.regions), model_type=s.model_type,
                checkpoint=s.checkpoint, generator=generator, device=cfg.refine.device, threads=threads,
                method=cfg.method, working_size=s.working_size, seed=s.seed, v1=gates,
                precision=s.precision)
