"""What ``samsr train`` needs before any work, without Ray: the checks naming the key, the training
source built from ``data.uris`` / ``data.photos``, and the colour maps' cache settings.
``pipeline.runner.train`` runs the job.
"""

from __future__ import annotations

import glob
import os

from pipeline.train.config import TrainJobConfig

__all__ = ["check_train", "build_source", "sam_settings"]


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
