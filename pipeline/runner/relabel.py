"""``samsr relabel`` on Ray Data: multi-object annotations in, re-labeled annotations out.

Dataflow (one item per image; the driver plans from the annotation file alone, never pixels)::

    plan (driver: parse the COCO JSON or list the label maps) -> from_items(images)
      -> decode (CPU tasks: image, label map) -> proposals (actor pool, samsr-v2.1 only; once
      per image, shared by all its objects) -> relabel (refiner actor pool: every object of the
      image in its own window, one at a time; writes the image's output) -> manifest rows
      (one per object, then one per image) streamed to the driver
      -> COCO: the output JSON merged from the per-image parts once every image is done

Outputs under ``output.prefix``: ``coco_parts/<key>.json`` (per image: its record and
annotations) and the merged ``<output_name>`` (COCO), or ``labels/<key>.png`` (label maps);
``manifest/part-*.parquet`` as for ``samsr refine`` (``row_kind`` image / instance / class).
Resume is per image: an image with an ``ok`` image row is skipped by a rerun (its part is
merged again). Annotations whose image id is unknown get error rows from the driver and are
kept unchanged in the output.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import RefineJobConfig, with_absolute_paths
from pipeline.relabel.output import object_summary, write_coco_output, write_job_record
from pipeline.relabel.plan import plan_relabel, stall_timeout
from pipeline.runner.job import gpu_env, items_dataset, new_run_id, run_on_ray, static_fields
from pipeline.runner.plan import StagePlan
from pipeline.runner.progress import ManifestWriter
from pipeline.runner.workers import ProposalWorker, RelabelWorker, proposal_kwargs, relabel_kwargs

__all__ = ["build_relabel_dataset", "run_relabel", "RelabelResult", "format_relabel"]


def build_relabel_dataset(items: list[dict], cfg: RefineJobConfig, plan: StagePlan, static: dict,
                          beacon: Any = None):
    """The lazy Ray Data pipeline over relabel items; rows out: ``{"row": json}``."""
    import ray.data as rd

    from pipeline.relabel.stages import relabel_decode_batch

    ds = items_dataset([{"meta": json.dumps(it)} for it in items])
    ds = ds.map_batches(relabel_decode_batch, batch_size=1, batch_format="numpy", num_cpus=plan.task_cpus,
                        compute=rd.TaskPoolStrategy(size=plan.decode_tasks),
                        fn_kwargs={"max_pixels": cfg.input.max_pixels})
    pool = dict(max_tasks_in_flight_per_actor=plan.tasks_per_actor)
    if cfg.uses_sam:
        ds = ds.map_batches(
            ProposalWorker, batch_size=1, batch_format="numpy", num_cpus=plan.actor_cpus,
            num_gpus=plan.sam_gpus,
            **gpu_env(plan.sam_gpus),
            compute=rd.ActorPoolStrategy(size=plan.sam_actors, **pool),
            fn_constructor_kwargs=proposal_kwargs(cfg, plan.torch_threads, v1=False),
        )
    return ds.map_batches(
        RelabelWorker, batch_size=1, batch_format="numpy", num_cpus=plan.actor_cpus,
        num_gpus=plan.refine_gpus, **gpu_env(plan.refine_gpus),
        **({"memory": plan.refine_memory} if plan.refine_memory else {}),
        compute=rd.ActorPoolStrategy(size=plan.refine_actors, **pool),
        fn_constructor_kwargs=relabel_kwargs(cfg, plan.torch_threads, static, beacon),
    )


@dataclass
class RelabelResult:
    job_id: str
    run_id: str
    output_prefix: str
    kind: str
    images: int
    already_done: int
    processed: int
    ok: int
    error: int
    wall_s: float
    plan_s: float
    plan: StagePlan | None
    summary: dict[str, Any]
    objects: Counter
    output_uri: str | None = None
    merged_images: int = 0


def run_relabel(cfg: RefineJobConfig, *, on_row: Callable[[dict], None] | None = None) -> RelabelResult:
    """Run a relabel job to completion (manifest, per-image outputs and, for COCO, the merged file)."""
    from pipeline.io import resume_state

    t_start = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    run_id = new_run_id()
    plan = plan_relabel(cfg)
    plan_s = time.perf_counter() - t_start
    write_job_record(cfg, plan)
    done, attempts = resume_state(cfg.output.prefix)
    todo = [it for it in plan.items if it["key"] not in done]
    for it in todo:
        it["attempt"] = attempts[it["key"]] + 1
    writer = ManifestWriter(cfg.output.prefix, run_id, cfg.ray.manifest_rows_per_part,
                            cfg.ray.manifest_flush_s)
    static = static_fields(cfg, run_id)
    for row in plan.driver_rows:
        if row["key"] not in done:
            fixed = {k: static.get(k) for k in ("job_id", "run_id", "method", "model_name", "model_hash")}
            writer.add({**fixed, "attempt": attempts[row["key"]] + 1, **row})
    writer.flush()
    counts, stage_plan = run_on_ray(
        cfg, todo, lambda it, c, p, b: build_relabel_dataset(it, c, p, static, b), writer, on_row=on_row,
        desc="relabel", counts_item=lambda row: row.get("row_kind") == "image",
        stall_timeout_s=stall_timeout(cfg.ray.stall_timeout_s, todo))
    output_uri, merged = None, 0
    if plan.kind == "coco":
        output_uri, merged = write_coco_output(plan, cfg.output.prefix, cfg.job_id)
    summary, objects = object_summary(cfg.output.prefix, cfg.job_id)
    return RelabelResult(
        job_id=cfg.job_id, run_id=run_id, output_prefix=cfg.output.prefix, kind=plan.kind,
        images=len(plan.items), already_done=len(plan.items) - len(todo),
        processed=counts["ok"] + counts["error"], ok=counts["ok"], error=counts["error"],
        wall_s=time.perf_counter() - t_start, plan_s=plan_s, plan=stage_plan, summary=summary,
        objects=objects, output_uri=output_uri, merged_images=merged,
    )


def format_relabel(result: RelabelResult) -> str:
    """The final summary: images, objects, the output and the coarse-vs-refined table."""
    from pipeline.summary import format_counts, format_quality_table

    s = result.summary
    errors = ", ".join(f"{k}={v}" for k, v in sorted(s["error_types"].items())) or "-"
    what = "instances" if result.kind == "coco" else "classes"
    pairs = [
        ("job", f"{result.job_id} (run {result.run_id})"),
        ("output", result.output_uri or result.output_prefix),
        ("images listed", result.images),
        ("already done (skipped)", result.already_done),
        ("images this run", f"{result.processed} (ok {result.ok}, failed {result.error})"),
        (f"{what} (job total)", f"ok {s['ok']}, failed {s['error']}"
         + (f", crowd regions copied {s['skipped']}" if result.kind == "coco" else "")),
        ("object failures by type", errors),
        ("planning", f"{result.plan_s:.2f} s"),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    if result.kind == "coco":
        pairs.append(("images merged into the output", result.merged_images))
    return format_counts(pairs) + "\n\n" + format_quality_table(s, unit=what)
