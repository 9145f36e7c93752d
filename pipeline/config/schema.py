"""Typed job configuration: YAML -> frozen dataclasses, validated before any work starts.

A config file is a mapping of sections (``input``, ``output``, ``model``, ``sam``, ``v1``,
``refine``, ``ray``) plus the top-level keys ``job_id`` and ``method``. Every key is optional
except ``input.uri`` and ``output.prefix``; ``configs/default.yaml`` documents them all.

An unknown key or a bad value raises ``ValueError`` whose message starts with the key path,
e.g. ``refine.decode: must be one of 'full', 'strided', 'bbox', 'contour' (got 'fast')``.
``pipeline.config.preflight.check_runtime`` then checks what the chosen method needs (optional
packages, checkpoint files, the refiner's input channels) so that a job fails before it touches
any sample. The section machinery lives in ``pipeline.config.typed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
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
    "METHODS",
    "InputConfig",
    "OutputConfig",
    "ModelConfig",
    "SamConfig",
    "RegionsConfig",
    "V1Config",
    "RefineConfig",
    "RayConfig",
    "RelabelConfig",
    "RefineJobConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "default_job_id",
    "with_absolute_paths",
]

METHODS = ("crm", "samsr-v1", "samsr-v2.1")
Method = Literal["crm", "samsr-v1", "samsr-v2.1"]


@dataclass(frozen=True)
class InputConfig:
    """Where the samples come from (any fsspec URL) and how they are laid out."""

    uri: str = _f(None, _nonempty)
    layout: Literal["prefix", "webdataset", "list"] = "prefix"
    image_suffix: str | None = None  # None: the layout's default (prefix: "_im.jpg", wds: "jpg")
    mask_suffix: str | None = None
    gt_suffix: str | None = None
    max_pixels: int = _f(192_000_000, _positive)  # per image (16000x12000); larger decodes become error rows
    limit: int | None = _f(None, _positive)  # process only the first N listed samples


@dataclass(frozen=True)
class OutputConfig:
    prefix: str = _f(None, _nonempty)
    soft: bool = False  # also write the 8-bit soft probability map next to the binary mask


@dataclass(frozen=True)
class ModelConfig:
    name: str = "crm_mnv2"
    checkpoint: str | None = None


@dataclass(frozen=True)
class SamConfig:
    """The proposal stage of the samsr methods (DESIGN 2.4b): ``proposals`` picks the source
    (``sam``: segment-anything, needs ``checkpoint``; ``regions``: a classical segmentation, no
    weights, parameters in the ``regions`` section). None: ``sam`` when ``checkpoint`` is set,
    else ``regions`` (resolved by validation). ``working_size`` and ``seed`` apply to both."""

    proposals: Literal["sam", "regions"] | None = None
    model_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    checkpoint: str | None = None
    working_size: int = _f(1024, _positive)
    points_per_side: int = _f(32, _positive)
    points_per_batch: int = _f(64, _positive)
    pred_iou_thresh: float = _f(0.88, _unit)
    stability_score_thresh: float = _f(0.95, _unit)
    box_nms_thresh: float = _f(0.7, _unit)
    seed: int = _f(0, _non_negative)
    # autocast type of SAM's image encoder (proposals: sam); auto: bf16 on CUDA (fp16 without bf16),
    # fp32 on CPU (exact, stock's masks); bf16 on a CPU with bf16 instructions: opt-in, not exact
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # the mask decoder's attention products reordered (opt-in; same function up to float rounding)
    reassociate: bool = False


def _segment_size(v: int) -> str | None:
    return None if v >= 16 else "must be >= 16"


def _fraction(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else "must be in (0, 1)"


def _above_one(v: float) -> str | None:
    return None if v > 1.0 else "must be > 1"


@dataclass(frozen=True)
class RegionsConfig:
    """The ``regions`` proposal source (``pipeline.sam.regions.RegionSettings``, same fields)."""

    algorithm: Literal["felzenszwalb"] = "felzenszwalb"
    segment_size: int = _f(512, _segment_size)
    scale: float = _f(100.0, _positive)
    sigma: float = _f(0.8, _non_negative)
    min_segment: float = _f(0.0005, _fraction)
    levels: int = _f(4, _positive)
    merge_factor: float = _f(3.0, _above_one)
    min_area: float = _f(0.001, _unit)


@dataclass(frozen=True)
class V1Config:
    """SAM-SR-v1 gates (DESIGN 2.3); None means the defaults of ``pipeline.sam.merge_v1``."""

    cover_thresh: float | None = _f(None, _unit)
    sparsity_thresh: float | None = _f(None, _unit)
    deform_iou_thresh: float | None = _f(None, _unit)


@dataclass(frozen=True)
class RefineConfig:
    decode: Literal["full", "strided", "bbox", "contour"] = "full"
    stride: int = _f(4, _positive)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # autocast type of the refiner; auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int | None = _f(None, _positive)  # torch threads per refiner actor (None: its CPUs)
    options: dict = field(default_factory=dict)  # extra pipeline.refine.RefineOptions fields
    # the quality estimate without ground truth (pipeline.refine.trust): a trust model JSON
    # ("shipped": pipeline/weights/trust_v1.json; null: no score) gives every output trust_score
    trust_model: str | None = "shipped"
    # do-no-harm acceptance: none (every refined mask is the output), score (an output whose
    # trust_score < min_score is the coarse mask; the refined one goes to candidates/) or regions
    # (each change from the coarse mask judged on its own by region_model: pipeline.refine.regions_trust)
    accept: Literal["none", "score", "regions"] = "none"
    min_score: float | None = _f(None, _unit)  # None: the trust model's own min_score
    # the per-change model of accept: regions ("shipped": pipeline/weights/trust_regions_v4.json)
    region_model: str = "shipped"


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS if set, else a local Ray started in-process
    num_cpus: int | None = _f(None, _positive)  # local Ray only
    num_gpus: int | None = _f(None, _non_negative)  # local Ray only
    object_store_memory: int | None = _f(None, _positive)  # bytes, local Ray only
    batch_size: int = _f(1, _positive)  # images per batch in the image stages
    refine_actors: int | None = _f(None, _positive)  # None: sized from the cluster
    sam_actors: int | None = _f(None, _positive)
    decode_tasks: int | None = _f(None, _positive)  # decode tasks in flight
    cpus_per_actor: float | None = _f(None, _positive)
    gpus_per_actor: float | None = _f(None, _non_negative)  # None: from the actors' GPU memory needs
    # memory of one GPU card (the smallest); None: read from the GPU nodes (nvidia-smi) when the job
    # runs on GPUs (pipeline.runner.plan: the GPU actors' shares must fit it)
    gpu_memory_gb: float | None = _f(None, _positive)
    # Ray memory asked per refiner actor; None: from input.max_pixels (pipeline.runner.plan.refiner_memory)
    refine_actor_memory_gb: float | None = _f(None, _positive)
    actor_start_timeout_s: float = _f(600.0, _positive)  # wait this long for the model actors to start
    manifest_rows_per_part: int = _f(256, _positive)
    manifest_flush_s: float = _f(30.0, _positive)  # on a timer; a driver crash redoes at most this much
    # no sample finished this long (or 10x the slowest) and no refiner reported progress: fail
    stall_timeout_s: float = _f(300.0, _positive)
    progress: bool = True


@dataclass(frozen=True)
class RelabelConfig:
    """``samsr relabel`` only (``samsr refine`` ignores it): re-label multi-object annotations.
    With ``coco`` set, ``input.uri`` is the images prefix (``file_name`` is relative to it);
    without, ``input.uri`` holds label maps in the input layout (NAME_im.jpg + NAME_seg.png of
    class ids, optional NAME_gt.png)."""

    coco: str | None = None  # COCO instances JSON to re-label
    gt_coco: str | None = None  # ground-truth COCO JSON (same annotation ids): metrics
    scale: float | None = _f(None, _positive)  # full / annotation size; null: from the records' width/height
    margin_ratio: float = _f(0.25, _non_negative)  # crop margin per side, fraction of the box's long side
    min_margin: int = _f(16, _non_negative)  # ...at least this many pixels
    min_size: int = _f(256, _positive)  # a crop side is at least this long (tiny instances)
    ignore: int | None = _f(255, _non_negative)  # label maps: this value is never a class, stays as is
    output_name: str | None = None  # output COCO file name; null: the input's


@dataclass(frozen=True)
class RefineJobConfig:
    """A whole ``samsr refine`` job. ``method`` is resolved (never None) after validation."""

    input: InputConfig
    output: OutputConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    v1: V1Config = field(default_factory=V1Config)
    refine: RefineConfig = field(default_factory=RefineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    method: Method | None = None  # None: samsr-v2.1 if sam.checkpoint is set, else crm
    job_id: str | None = None  # None: derived from output.prefix (see default_job_id)

    @property
    def uses_sam(self) -> bool:
        return self.method in ("samsr-v1", "samsr-v2.1")


_SECTIONS = {
    "input": InputConfig,
    "output": OutputConfig,
    "model": ModelConfig,
    "sam": SamConfig,
    "regions": RegionsConfig,
    "v1": V1Config,
    "refine": RefineConfig,
    "ray": RayConfig,
    "relabel": RelabelConfig,
}


def default_job_id(output_prefix: str) -> str:
    """A job id derived from the output prefix, so reruns (resume) keep the same id.

    ``s3://bucket/runs/big-test`` -> ``big-test-`` + 8 hex digits of the prefix's sha256.
    """
    prefix = output_prefix.rstrip("/")
    if "://" not in prefix:
        prefix = os.path.normpath(prefix)
    name = prefix.rsplit("/", 1)[-1] or "job"
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:40].lstrip(".") or "job"
    return f"{name}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


def config_from_dict(data: Mapping[str, Any]) -> RefineJobConfig:
    """Validate a config mapping (as loaded from YAML) into a ``RefineJobConfig``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config: must be a mapping (got {type(data).__name__})")
    top = {"method", "job_id", *_SECTIONS}
    for key in data:
        if key not in top:
            raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(top))})")
    sections = {name: build_section(cls, data.get(name), name) for name, cls in _SECTIONS.items()}
    method = data.get("method")
    if method is not None and method not in METHODS:
        shown = ", ".join(repr(m) for m in METHODS)
        raise ValueError(f"method: must be one of {shown} (got {method!r})")
    if method is None:
        method = "samsr-v2.1" if sections["sam"].checkpoint else "crm"
    if sections["sam"].proposals is None:
        source = "sam" if sections["sam"].checkpoint else "regions"
        sections["sam"] = dataclasses.replace(sections["sam"], proposals=source)
    job_id = data.get("job_id")
    if job_id is None:
        job_id = default_job_id(sections["output"].prefix)
    elif not isinstance(job_id, str) or not job_id or not all(c.isalnum() or c in "._-" for c in job_id):
        raise ValueError(f"job_id: must be a non-empty string of [A-Za-z0-9._-] (got {job_id!r})")
    _check_refine_options(sections["refine"].options)
    return RefineJobConfig(method=method, job_id=job_id, **sections)


def _check_refine_options(options: Mapping[str, Any]) -> None:
    """Check ``refine.options`` names against ``pipeline.refine.RefineOptions`` when it exists."""
    if not options:
        return
    try:
        from pipeline.refine import RefineOptions
    except ImportError as e:  # pragma: no cover - the refiner package is part of the project
        raise ValueError(f"refine.options: pipeline.refine is not importable ({e})") from e
    names = {f.name for f in dataclasses.fields(RefineOptions)} - {"decode", "stride", "precision"}
    for key in options:
        if key not in names:
            raise ValueError(f"refine.options.{key}: unknown key (known: {', '.join(sorted(names))})")
    try:
        RefineOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    except (TypeError, ValueError) as e:
        named = re.match(r"RefineOptions\.(\w+)=", str(e))  # name the key: refine.options.<field>
        raise ValueError(f"refine.options.{named.group(1)}: {e}" if named else f"refine.options: {e}") from e


def load_config(path: str | None, overrides: Iterable[tuple[list[str], Any]] = ()) -> RefineJobConfig:
    """Read ``path`` (or start empty), apply overrides, validate."""
    data = read_yaml(path) if path else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_to_dict(cfg: RefineJobConfig) -> dict:
    """The resolved config as a plain mapping (what the job prints and records)."""
    return dataclasses.asdict(cfg)


def with_absolute_paths(cfg: RefineJobConfig) -> RefineJobConfig:
    """Local relative paths (input, output, checkpoints) made absolute, as Ray workers on other
    nodes or in other working directories must see them. URLs are left as they are."""

    def fix(uri: str | None) -> str | None:
        if uri is None or "://" in uri:
            return uri
        return os.path.abspath(uri)

    return dataclasses.replace(
        cfg,
        input=dataclasses.replace(cfg.input, uri=fix(cfg.input.uri)),
        output=dataclasses.replace(cfg.output, prefix=fix(cfg.output.prefix)),
        model=dataclasses.replace(cfg.model, checkpoint=fix(cfg.model.checkpoint)),
        sam=dataclasses.replace(cfg.sam, checkpoint=fix(cfg.sam.checkpoint)),
        relabel=dataclasses.replace(cfg.relabel, coco=fix(cfg.relabel.coco),
                                    gt_coco=fix(cfg.relabel.gt_coco)),
    )
