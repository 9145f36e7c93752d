"""The refine pipeline on Ray Data: refs in, masks and a Parquet manifest out.

Dataflow (one row per sample; only refs enter the first stage, so no dataset of images is
ever materialised)::

    list_samples (driver) -> from_items(refs) -> decode (CPU tasks)
      -> SAM (actor pool, samsr methods only) -> refiner (actor pool)
      -> metrics + mask writes (CPU tasks) -> rows streamed to the driver
      -> manifest parts written by the driver, after the masks of their rows

Memory: image batches are small (``ray.batch_size``, default 1), decode tasks in flight are
capped, each model actor holds one batch at a time (two with a GPU) and Ray Data's
backpressure stops decoding while the model stages are behind. Measured on 2 CPUs with 24
images of 6000x4000 (about 120 MB decoded each, 2.9 GB in all): at most 297 MiB in the object
store at any time.

Progress: the driver writes finished rows on a timer (``ray.manifest_flush_s``) whether or not
new rows arrive, and on SIGTERM (``ray job stop``) flushes every row it holds before exiting.
A watchdog fails the job with :class:`JobStalledError` (after flushing) when no sample has
finished for ``ray.stall_timeout_s`` (or 10x the slowest sample so far, if longer; before the
first sample, plus ``ray.actor_start_timeout_s`` for loading the models) and no refiner actor
has reported progress on a long sample (``pipeline.runner.progress.Beacon``), naming the stage
that waits and the resources that are missing, instead of hanging silently. Model actors that do
not start within ``ray.actor_start_timeout_s`` fail the same way.

Resume and retries: a rerun skips keys that already have an ``ok`` row; other keys get a new
attempt number. Mask URIs are deterministic (retries overwrite), and the manifest is written
only by the driver, as ``part-<run_id>-<seq>.parquet`` from rows it has de-duplicated by key,
so a task retried after a worker death can never produce a second row.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import RefineJobConfig, with_absolute_paths
from pipeline.runner.job import gpu_env, items_dataset, new_run_id, run_on_ray, static_fields
from pipeline.runner.plan import StagePlan, describe_memory
from pipeline.runner.progress import ManifestWriter
from pipeline.runner.workers import ProposalWorker, RefinerWorker, proposal_kwargs, refiner_kwargs
from pipeline.stages import decode_batch, finish_batch

__all__ = ["build_dataset", "run_refine", "RunResult", "format_run"]


def build_dataset(items: list[dict], cfg: RefineJobConfig, plan: StagePlan, static: dict[str, Any],
                  beacon: Any = None):
    """The lazy Ray Data pipeline over ``items`` (``{"meta": json}`` refs); rows out: ``{"row": json}``."""
    import ray.data as rd

    bs = cfg.ray.batch_size
    ds = items_dataset(items).map_batches(
        decode_batch,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.task_cpus,
        compute=rd.TaskPoolStrategy(size=plan.decode_tasks),
        fn_kwargs={"max_pixels": cfg.input.max_pixels, "load_gt": cfg.input.gt_suffix != ""},
    )
    # one batch per CPU actor: a busy actor sends the next batch to an idle one on another node
    # (Ray Data prefers the actor on the block's node while it has spare capacity); two per GPU
    # actor so the next batch is already there when the GPU finishes
    pool = dict(max_tasks_in_flight_per_actor=plan.tasks_per_actor)
    if cfg.uses_sam:
        ds = ds.map_batches(
            ProposalWorker,
            batch_size=bs,
            batch_format="numpy",
            num_cpus=plan.actor_cpus,
            num_gpus=plan.sam_gpus,
            **gpu_env(plan.sam_gpus),
            compute=rd.ActorPoolStrategy(size=plan.sam_actors, **pool),
            fn_constructor_kwargs=proposal_kwargs(cfg, plan.torch_threads),
        )
    ds = ds.map_batches(
        RefinerWorker,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.actor_cpus,
        num_gpus=plan.refine_gpus,
        **gpu_env(plan.refine_gpus),
        **({"memory": plan.refine_memory} if plan.refine_memory else {}),
        compute=rd.ActorPoolStrategy(size=plan.refine_actors, **pool),
        fn_constructor_kwargs=refiner_kwargs(cfg, plan.torch_threads, beacon),
    )
    return ds.map_batches(
        finish_batch,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.task_cpus,
        compute=rd.TaskPoolStrategy(size=plan.finish_tasks),
        fn_kwargs={"output_prefix": cfg.output.prefix, "static": static},
    )


@dataclass
class RunResult:
    job_id: str
    run_id: str
    output_prefix: str
    listed: int
    already_done: int
    processed: int
    ok: int
    error: int
    wall_s: float
    plan: StagePlan | None
    summary: dict[str, Any]
    parts: list[str] = dataclasses.field(default_factory=list)
    duplicates_dropped: int = 0
    max_pixels: int = 0  # input.max_pixels (the plan's memory ask is sized from it)

    @property
    def throughput(self) -> float:
        """Samples finished (ok or error) per second of this run's wall time."""
        return self.processed / self.wall_s if self.wall_s > 0 else 0.0


def run_refine(cfg: RefineJobConfig, *, on_row: Callable[[dict], None] | None = None) -> RunResult:
    """Run a refine job to completion and return its result (the manifest is on storage).

    on_row(row) is called on the driver for each manifest row as it arrives (progress hooks).
    """
    from pipeline.io import list_samples, read_manifest, resume_state
    from pipeline.summary import summarize_manifest

    t_start = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    run_id = new_run_id()
    suffixes = {k: getattr(cfg.input, k) for k in ("image_suffix", "mask_suffix", "gt_suffix")}
    suffixes = {k: v for k, v in suffixes.items() if v is not None}
    try:
        refs = list_samples(cfg.input.uri, cfg.input.layout, **suffixes)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"input.uri: {e}") from e
    if cfg.input.limit:
        refs = refs[: cfg.input.limit]
    done, attempts = resume_state(cfg.output.prefix)
    todo = [r for r in refs if r.key not in done]
    items = [
        {"meta": json.dumps({"key": r.key, "ref": r.to_dict(), "attempt": attempts[r.key] + 1})} for r in todo
    ]
    writer = ManifestWriter(
        cfg.output.prefix, run_id, cfg.ray.manifest_rows_per_part, cfg.ray.manifest_flush_s
    )
    static = static_fields(cfg, run_id) if items else {}
    counts, plan = run_on_ray(cfg, items, lambda it, c, p, b: build_dataset(it, c, p, static, b), writer,
                              on_row=on_row)
    wall = time.perf_counter() - t_start
    summary = summarize_manifest(read_manifest(cfg.output.prefix), job_id=cfg.job_id)
    return RunResult(
        job_id=cfg.job_id,
        run_id=run_id,
        output_prefix=cfg.output.prefix,
        listed=len(refs),
        already_done=len(refs) - len(todo),
        processed=counts["ok"] + counts["error"],
        ok=counts["ok"],
        error=counts["error"],
        wall_s=wall,
        plan=plan,
        summary=summary,
        parts=writer.parts,
        duplicates_dropped=writer.duplicates,
        max_pixels=cfg.input.max_pixels,
    )


def format_run(result: RunResult) -> str:
    """The final summary: counts, throughput and the coarse-vs-refined quality table."""
    from pipeline.summary import format_counts, format_quality_table

    s = result.summary
    errors = ", ".join(f"{k}={v}" for k, v in sorted(s["error_types"].items())) or "-"
    pairs = [
        ("job", f"{result.job_id} (run {result.run_id})"),
        ("output", result.output_prefix),
        ("samples listed", result.listed),
        ("already done (skipped)", result.already_done),
        ("processed this run", f"{result.processed} (ok {result.ok}, failed {result.error})"),
        ("wall time", f"{result.wall_s:.1f} s"),
        ("throughput", f"{result.throughput:.2f} samples/s"),
        ("job total", f"{s['samples']} samples: ok {s['ok']}, failed {s['error']}"),
        ("failures by type", errors),
    ]
    if result.plan is not None:
        pairs.append(("refiner actors", describe_memory(result.plan, result.max_pixels)))
    if result.duplicates_dropped:
        pairs.append(("duplicate rows dropped", result.duplicates_dropped))
    if s.get("mean_total_ms") is not None:
        pairs.append(("mean work per sample", f"{s['mean_total_ms']:.0f} ms"))
    return format_counts(pairs) + "\n\n" + format_quality_table(s)
