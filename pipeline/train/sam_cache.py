"""Proposal colour maps (SAM or ``regions``) for SAM-SR-v2.1 training: computed once (Ray tasks
under ``samsr train``, see ``pipeline.runner.train``), cached, read per crop.

Cache layout: ``<cache_uri>/<settings digest>/<image key>.png`` where the image key is the
content hash of the decoded image (:func:`pipeline.train.data.image_key`) and the digest covers
every setting that changes the map (the source; SAM's model type, checkpoint URI, points per
side, thresholds; the regions parameters; working size, colour seed). A second run with the
same settings reuses every file; changing a setting gives a fresh folder. Files are written
whole (idempotent overwrite), so a killed job resumes by skipping what exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.io.fs import open_fs
from pipeline.sam.regions import RegionGenerator, RegionSettings
from pipeline.train.data import image_key

__all__ = ["SamSettings", "SamColourCache", "compute_colour_map", "precompute_colour_maps", "task_resources"]


@dataclass(frozen=True)
class SamSettings:
    """Proposal settings that determine a colour map: the source (``sam`` or ``regions``, see
    DESIGN 2.4b) and its parameters (the SAM fields, or ``regions``)."""

    proposals: str = "sam"
    regions: RegionSettings = field(default_factory=RegionSettings)
    model_type: str = "vit_h"
    checkpoint: str | None = None
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    working_size: int = 1024
    seed: int = 0

    def digest(self) -> str:
        """16 hex chars of sha256 over the settings as sorted JSON."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def __post_init__(self) -> None:
        if self.proposals not in ("sam", "regions"):
            raise ValueError(f"proposals: must be 'sam' or 'regions' (got {self.proposals!r})")

    def generator(self, device: str = "cpu") -> Any:
        """The proposal source: ``RegionGenerator`` (CPU) or a ``FastMaskGenerator`` (builds the
        SAM model on ``device``)."""
        if self.proposals == "regions":
            return RegionGenerator(self.regions)
        from pipeline.sam import FastMaskGenerator, build_sam

        sam = build_sam(self.model_type, self.checkpoint, seed=self.seed)  # seed: random weights (tests)
        return FastMaskGenerator(sam.to(device), points_per_side=self.points_per_side,
                                 pred_iou_thresh=self.pred_iou_thresh,
                                 stability_score_thresh=self.stability_score_thresh)


def compute_colour_map(generator: Any, image: np.ndarray, key: str, settings: SamSettings) -> np.ndarray:
    """SAM colour map of image (H, W, 3) uint8 -> (h, w, 3) uint8 at SAM's working size."""
    from pipeline.sam import propose

    return propose(generator, image, key, working_size=settings.working_size, seed=settings.seed).colour_map


class SamColourCache:
    """Reader/writer of cached colour maps; calling it is the CropDataset ``sam_lookup``.

    ``cache(key, image)`` -> (h, w, 3) uint8 colour map; raises ValueError naming the sample and
    the missing file when the map was not precomputed.
    """

    def __init__(self, uri: str, settings: SamSettings) -> None:
        self.uri, self.settings = uri.rstrip("/"), settings

    def path_for(self, image: np.ndarray) -> str:
        return f"{self.uri}/{self.settings.digest()}/{image_key(image)}.png"

    def has(self, image: np.ndarray) -> bool:
        fs, path = open_fs(self.path_for(image))
        return fs.exists(path)

    def write(self, image: np.ndarray, colours: np.ndarray) -> str:
        uri = self.path_for(image)
        fs, path = open_fs(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(colours[..., ::-1]))
        if not ok:
            raise ValueError(f"cannot encode colour map for {uri}")
        fs.pipe_file(path, buf.tobytes())
        return uri

    def __call__(self, key: str, image: np.ndarray) -> np.ndarray:
        uri = self.path_for(image)
        fs, path = open_fs(uri)
        if not fs.exists(path):
            raise ValueError(f"sample {key!r}: no cached SAM colour map at {uri}; run the precompute step")
        img = cv2.imdecode(np.frombuffer(fs.cat_file(path), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"sample {key!r}: cannot decode cached SAM colour map {uri}")
        return np.ascontiguousarray(img[..., ::-1])


def _fill(source: Any, indices: list[int], *, cache: SamColourCache, device: str = "cpu") -> tuple[int, int]:
    """Compute the missing maps for ``indices`` (SAM on ``device``); returns (computed, already cached)."""
    generator, done, cached = None, 0, 0
    for i in indices:
        key, image, _ = source.get(i)
        if cache.has(image):
            cached += 1
            continue
        if generator is None:
            generator = cache.settings.generator(device)
        cache.write(image, compute_colour_map(generator, image, key, cache.settings))
        done += 1
    return done, cached


def task_resources(settings: SamSettings, cpus_per_task: float, use_gpu: bool) -> dict[str, float]:
    """Resources of one precompute part (Ray's ``num_cpus`` / ``num_gpus``): a GPU too when training
    uses GPUs and the maps come from SAM (the ``regions`` source runs on the CPU)."""
    gpu = use_gpu and settings.proposals == "sam"
    return {"num_cpus": cpus_per_task, "num_gpus": 1 if gpu else 0}


#: runs ``fill(part)`` for every part of the samples' indices, returns the (computed, cached) pairs
MapParts = Callable[[Callable[[list[int]], tuple[int, int]], list[list[int]]], list[tuple[int, int]]]


def precompute_colour_maps(source: Any, cache: SamColourCache, map_parts: MapParts | None = None,
                           parts: int = 1, device: str = "cpu") -> dict[str, int]:
    """Fill the cache for every sample of ``source`` (skips existing files), SAM on ``device``.

    The samples are split into ``parts`` interleaved parts, each filled by one call that builds
    the generator once; ``map_parts(fill, parts)`` runs them (``pipeline.runner.train`` runs them
    as Ray tasks with :func:`task_resources`; default: one after the other in this process).
    Returns {"computed": n, "cached": m}.
    """
    n = len(source)
    chunks = [list(range(n))[k::parts] for k in range(max(1, min(parts, n)))]
    fill = functools.partial(_fill, source, cache=cache, device=device)
    results = map_parts(fill, chunks) if map_parts is not None else [fill(c) for c in chunks]
    return {"computed": sum(r[0] for r in results), "cached": sum(r[1] for r in results)}
