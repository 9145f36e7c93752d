"""The refiner of a job, loaded once: model, options for its device and the trust policy.

:class:`LoadedRefiner` is what the refine and relabel model actors (``pipeline.runner.workers``)
hold, and what ``samsr benchmark trust`` / ``pipeline`` call in a bare loop; nothing here needs
Ray. Its constructor arguments come from a job's config through :func:`refine_options` and
:func:`accept_kwargs`, so every caller builds the same refiner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.refine.gpu_memory import CacheTrimmer

__all__ = ["resolve_device", "LoadedRefiner", "refine_options", "accept_kwargs"]


def resolve_device(requested: str, gpu_ids: Sequence = ()) -> str:
    """``refine.device`` -> the torch device of this process: ``cpu``; ``cuda`` when asked (an
    error if this process sees no CUDA device); ``auto``: ``cuda`` when CUDA is available and
    this worker was given a GPU (``gpu_ids``: Ray's ``get_gpu_ids()`` inside a Ray worker, ()
    elsewhere), else ``cpu``."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available() and (requested == "cuda" or gpu_ids):
        return "cuda"
    if requested == "cuda":
        raise ValueError("refine.device: 'cuda' but this worker sees no CUDA device")
    return "cpu"


class LoadedRefiner:
    """A refiner model loaded once: CPU state dict -> ``prepare_model`` -> device.

    Calling it refines one image: ``(image (H, W, 3) uint8, mask (H, W) uint8, colours or None)
    -> Outcome`` (:class:`pipeline.refine.trust.Outcome`: probabilities plus the trust fields)
    with the job's options. ``accept``: ``{"policy": "none" | "score" | "regions", "trust_model": path,
    "shipped" or None, "min_score": float or None, "region_model": path or "shipped"}``
    (``refine.accept`` / ``refine.trust_model`` / ``refine.min_score`` / ``refine.region_model``):
    with a trust model every output gets a score; with policy ``score`` an output whose score is
    below ``min_score`` (default the model's) is the coarse mask instead; with ``regions`` each
    change from the coarse mask is kept or undone on its own
    (:func:`pipeline.refine.regions_trust.decide_regions`).
    """

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 accept: dict | None = None, gpu_ids: Sequence = ()) -> None:
        import torch

        from pipeline.models import build_model
        from pipeline.refine import prepare_model
        from pipeline.refine.cascade import refine_detailed
        from pipeline.refine.options import options_for_device
        from pipeline.refine.trust import load_trust_model

        torch.set_num_threads(threads)
        self.device = resolve_device(device, gpu_ids)
        self.options = options_for_device(options, self.device)
        from pipeline.refine.regions_trust import load_region_model

        accept = {"policy": "none", "trust_model": None, "min_score": None, "region_model": "shipped",
                  **(accept or {})}
        self.policy, self.min_score = accept["policy"], accept["min_score"]
        self.trust_model = load_trust_model(accept["trust_model"]) if accept["trust_model"] else None
        if self.policy != "none" and self.trust_model is None:
            raise ValueError(f"refine.accept: {self.policy!r} needs refine.trust_model")
        self.region_model = load_region_model(accept["region_model"]) if self.policy == "regions" else None
        model = build_model(model_name, checkpoint)  # torch.load(map_location="cpu") inside
        self.model = prepare_model(model, self.options).to(self.device)
        self._refine = refine_detailed
        self.trimmer = CacheTrimmer(self.device)  # CUDA's cache after a large image

    def __call__(self, image, mask, colors):
        from pipeline.refine.regions_trust import decide_regions
        from pipeline.refine.trust import Outcome, decide, trust_features

        r = self._refine(self.model, image, mask, colors, options=self.options, device=self.device)
        self.trimmer.after_image(image.shape[0] * image.shape[1])
        info: dict = {"line_level": r.threshold}
        if self.trust_model is None:
            return Outcome(r.prob, info)
        features = trust_features(r.prob, r.coarse01, image, r.spread)
        if self.policy == "regions":
            prob, share, score = decide_regions(r.prob, r.coarse01, image, r.spread, features,
                                                self.trust_model, self.region_model, self.min_score)
            info.update(trust_score=score, accepted=share == 1.0, accepted_share=share)
            return Outcome(prob, info, candidate=None if share == 1.0 else r.prob)
        d = decide(features, self.trust_model, self.policy, self.min_score)
        info.update(trust_score=d.score, accepted=d.accepted)
        if d.accepted:
            return Outcome(r.prob, info)
        # the coarse mask as the writers binarise a uint8 mask (> 128), exactly
        coarse = (np.rint(r.coarse01 * 255) > 128).astype(np.float32)
        return Outcome(coarse, info, candidate=r.prob)


def refine_options(cfg) -> dict:
    """RefineOptions keyword arguments of a job (YAML lists become tuples; ``precision`` may be
    ``auto``, resolved by the worker for its device: ``options_for_device``)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.refine.options.items()}
    r = cfg.refine
    return {**options, "decode": r.decode, "stride": r.stride, "precision": r.precision}


def accept_kwargs(cfg) -> dict[str, Any]:
    """The ``accept`` argument of :class:`LoadedRefiner` from a job's ``refine`` section."""
    r = cfg.refine
    return {"policy": r.accept, "trust_model": r.trust_model, "min_score": r.min_score,
            "region_model": r.region_model}
