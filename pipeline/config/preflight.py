"""Checks a refine / relabel job makes before any work: packages, checkpoint files, URL schemes,
the model's inputs against the method. Each failure is a ``ValueError`` naming the config key."""

from __future__ import annotations

import importlib.util
import os

from pipeline.config.schema import RefineJobConfig

__all__ = ["check_runtime", "check_relabel"]


def _exists(uri: str) -> bool:
    if "://" not in uri:
        return os.path.isfile(uri)
    from pipeline.io import open_fs

    fs, path = open_fs(uri)
    return fs.exists(path)


def _require_package(module: str, why: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{key}: needs the Python package {module!r} ({why}); install it first")


def _protocol(uri: str) -> str | None:
    return uri.split("://", 1)[0] if "://" in uri else None


def check_runtime(cfg: RefineJobConfig) -> None:
    """Check what the job needs before any work: packages, checkpoints, model/method match.

    Raises ValueError naming the key at fault.
    """
    import fsspec

    for key, uri in (
        ("input.uri", cfg.input.uri),
        ("output.prefix", cfg.output.prefix),
        ("model.checkpoint", cfg.model.checkpoint),
        ("sam.checkpoint", cfg.sam.checkpoint),
    ):
        proto = _protocol(uri) if uri else None
        if proto and proto not in ("file", "memory"):
            try:
                fsspec.get_filesystem_class(proto)
            except (ImportError, ValueError) as e:
                raise ValueError(f"{key}: cannot open {proto}:// URLs ({e})") from e

    from pipeline.models import SPECS

    if cfg.model.name not in SPECS:
        raise ValueError(f"model.name: must be one of {', '.join(sorted(SPECS))} (got {cfg.model.name!r})")
    if not cfg.model.checkpoint:
        raise ValueError("model.checkpoint: required (weights are never fetched implicitly)")
    if not _exists(cfg.model.checkpoint):
        raise ValueError(f"model.checkpoint: file not found: {cfg.model.checkpoint}")
    spec = SPECS[cfg.model.name]
    wants_proposals = cfg.method == "samsr-v2.1"
    if spec.takes_proposals != wants_proposals:
        kind = "a SAM-SR-v2.1 (7-channel)" if wants_proposals else "a CRM (4-channel)"
        raise ValueError(f"model.name: method {cfg.method} needs {kind} model (got {cfg.model.name!r}, "
                         f"{spec.kind})")
    if cfg.uses_sam and cfg.sam.proposals == "regions":
        _require_package("skimage", "regions proposals", "sam.proposals")
    elif cfg.uses_sam:
        _require_package("segment_anything", f"method {cfg.method}", "method")
        if not cfg.sam.checkpoint:
            raise ValueError(f"sam.checkpoint: required for method {cfg.method} with sam.proposals: sam "
                             "(or use sam.proposals: regions, which needs no weights)")
        if not _exists(cfg.sam.checkpoint):
            raise ValueError(f"sam.checkpoint: file not found: {cfg.sam.checkpoint}")
    _check_trust(cfg)
    if cfg.refine.device == "cuda":
        import torch

        if not torch.cuda.is_available() and not cfg.ray.address and not os.environ.get("RAY_ADDRESS"):
            raise ValueError("refine.device: 'cuda' but no CUDA device is visible")


def check_relabel(cfg: RefineJobConfig) -> None:
    """check_runtime plus what relabel needs (ValueError naming the key)."""
    check_runtime(cfg)
    if cfg.method == "samsr-v1":
        raise ValueError("method: samsr relabel runs crm or samsr-v2.1 (samsr-v1 merges whole-image "
                         "proposals into one coarse mask)")
    from pipeline.relabel.crops import CropRule

    CropRule(cfg.relabel.margin_ratio, cfg.relabel.min_margin, cfg.relabel.min_size)  # names the key
    if cfg.relabel.coco is not None:
        _require_package("pycocotools", "COCO RLE and polygons", "relabel.coco")
        if not _exists(cfg.relabel.coco):
            raise ValueError(f"relabel.coco: file not found: {cfg.relabel.coco}")
    if cfg.relabel.gt_coco is not None:
        if cfg.relabel.coco is None:
            raise ValueError("relabel.gt_coco: only with relabel.coco (label maps take NAME_gt.png)")
        if not _exists(cfg.relabel.gt_coco):
            raise ValueError(f"relabel.gt_coco: file not found: {cfg.relabel.gt_coco}")


def _check_trust(cfg: RefineJobConfig) -> None:
    """refine.trust_model readable and valid; refine.accept: score or regions needs it (regions: its
    image score is an input), regions also a readable refine.region_model."""
    r = cfg.refine
    if r.accept != "none" and not r.trust_model:
        raise ValueError(f"refine.accept: {r.accept!r} needs refine.trust_model (a trust model JSON, or "
                         "'shipped')")
    if r.trust_model:
        from pipeline.refine.trust import load_trust_model

        try:
            load_trust_model(r.trust_model)
        except (OSError, ValueError) as e:
            raise ValueError(f"refine.trust_model: {e}") from e
    if r.accept == "regions":
        from pipeline.refine.regions_trust import load_region_model

        try:
            load_region_model(r.region_model)
        except (OSError, ValueError) as e:
            raise ValueError(f"refine.region_model: {e}") from e
