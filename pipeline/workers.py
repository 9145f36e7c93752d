"""The model stages as plain callables: the refiner and the proposal source, each loaded once.

Ray Data runs these classes as actor pools (``pipeline.ray_runner``, ``pipeline.relabel_runner``);
``samsr benchmark pipeline`` calls the very same objects in a bare Python loop. Nothing here
needs Ray: the node id is recorded only when the object lives in a Ray worker.

The constructor keyword arguments of a job come from :func:`refiner_kwargs` /
:func:`proposal_kwargs`, so the Ray pipeline and the bare loop build identical workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.refine.gpu_memory import CacheTrimmer
from pipeline.stages import refine_batch, sam_batch

__all__ = ["resolve_device", "ray_node_id", "LoadedRefiner", "RefinerWorker", "ProposalWorker",
           "refine_options", "refiner_kwargs", "accept_kwargs", "proposal_kwargs"]


def resolve_device(requested: str) -> str:
    """``refine.device`` -> the torch device of this process: ``cpu``; ``cuda`` when asked (an
    error if this process sees no CUDA device); ``auto``: ``cuda`` when CUDA is available and
    (inside Ray) this worker was given a GPU, else ``cpu``."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available() and (requested == "cuda" or _ray_gpu_ids()):
        return "cuda"
    if requested == "cuda":
        raise ValueError("refine.device: 'cuda' but this worker sees no CUDA device")
    return "cpu"


def _ray_gpu_ids() -> list:
    import ray

    return ray.get_gpu_ids() if ray.is_initialized() else []


def ray_node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class LoadedRefiner:
    """A refiner model loaded once: CPU state dict -> ``prepare_model`` -> device.

    Calling it refines one image: ``(image (H, W, 3) uint8, mask (H, W) uint8, colours or None)
    -> Outcome`` (:class:`pipeline.refine.trust.Outcome`: probabilities plus the trust fields)
    with the job's options. ``accept``: ``{"policy": "none" | "score", "trust_model": path,
    "shipped" or None, "min_score": float or None}`` (``refine.accept`` / ``refine.trust_model`` /
    ``refine.min_score``): with a trust model every output gets a score; with policy ``score`` an
    output whose score is below ``min_score`` (default the model's) is the coarse mask instead.
    """

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 accept: dict | None = None) -> None:
        import torch

        from pipeline.models import build_model
        from pipeline.refine import prepare_model
        from pipeline.refine.cascade import refine_detailed
        from pipeline.refine.options import options_for_device
        from pipeline.refine.trust import load_trust_model

        torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.options = options_for_device(options, self.device)
        accept = {"policy": "none", "trust_model": None, "min_score": None, **(accept or {})}
        self.policy, self.min_score = accept["policy"], accept["min_score"]
        self.trust_model = load_trust_model(accept["trust_model"]) if accept["trust_model"] else None
        if self.policy != "none" and self.trust_model is None:
            raise ValueError(f"refine.accept: {self.policy!r} needs refine.trust_model")
        model = build_model(model_name, checkpoint)  # torch.load(map_location="cpu") inside
        self.model = prepare_model(model, self.options).to(self.device)
        self._refine = refine_detailed
        self.trimmer = CacheTrimmer(self.device)  # CUDA's cache after a large image

    def __call__(self, image, mask, colors):
        from pipeline.refine.trust import Outcome, decide, trust_features

        r = self._refine(self.model, image, mask, colors, options=self.options, device=self.device)
        self.trimmer.after_image(image.shape[0] * image.shape[1])
        info: dict = {"line_level": r.threshold}
        if self.trust_model is None:
            return Outcome(r.prob, info)
        d = decide(trust_features(r.prob, r.coarse01, image, r.spread), self.trust_model, self.policy,
                   self.min_score)
        info.update(trust_score=d.score, accepted=d.accepted)
        if d.accepted:
            return Outcome(r.prob, info)
        # the coarse mask as the writers binarise a uint8 mask (> 128), exactly
        coarse = (np.rint(r.coarse01 * 255) > 128).astype(np.float32)
        return Outcome(coarse, info, candidate=r.prob)


class RefinerWorker:
    """The refine stage: :func:`pipeline.stages.refine_batch` with a :class:`LoadedRefiner`."""

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 soft: bool, accept: dict | None = None) -> None:
        self.refiner = LoadedRefiner(model_name, checkpoint, options, device, threads, accept)
        self.soft = soft
        self.node = ray_node_id()

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return refine_batch(batch, refine_fn=self.refiner, soft=self.soft, node=self.node)


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

            dev = resolve_device(device)
            sam = build_sam(model_type, checkpoint, device=dev)
            self.generator = FastMaskGenerator(sam, precision=resolve_precision(precision, dev), **generator)
        self.kwargs = dict(method=method, working_size=working_size, seed=seed, v1_kwargs=v1)

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return sam_batch(batch, generator=self.generator, **self.kwargs)


def refine_options(cfg) -> dict:
    """RefineOptions keyword arguments of a job (YAML lists become tuples; ``precision`` may be
    ``auto``, resolved by the worker for its device: ``options_for_device``)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.refine.options.items()}
    r = cfg.refine
    return {**options, "decode": r.decode, "stride": r.stride, "precision": r.precision}


def accept_kwargs(cfg) -> dict[str, Any]:
    """The ``accept`` argument of :class:`LoadedRefiner` from a job's ``refine`` section."""
    r = cfg.refine
    return {"policy": r.accept, "trust_model": r.trust_model, "min_score": r.min_score}


def refiner_kwargs(cfg, threads: int) -> dict[str, Any]:
    """:class:`RefinerWorker` constructor arguments of a refine job."""
    return dict(model_name=cfg.model.name, checkpoint=cfg.model.checkpoint, options=refine_options(cfg),
                device=cfg.refine.device, threads=threads, soft=cfg.output.soft, accept=accept_kwargs(cfg))


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
