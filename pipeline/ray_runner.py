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
first sample, plus ``ray.actor_start_timeout_s`` for loading the models), naming the stage that
waits and the resources that are missing, instead of hanging silently. Model actors that do not
start within ``ray.actor_start_timeout_s`` fail the same way.

Resume and retries: a rerun skips keys that already have an ``ok`` row; other keys get a new
attempt number. Mask URIs are deterministic (retries overwrite), and the manifest is written
only by the driver, as ``part-<run_id>-<seq>.parquet`` from rows it has de-duplicated by key,
so a task retried after a worker death can never produce a second row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import RayConfig, RefineJobConfig, with_absolute_paths
from pipeline.plan import StagePlan, describe_memory, plan_job, plan_stages
from pipeline.progress import (
    DriverSignals,
    DropRayNotices,
    JobStalledError,
    ManifestWriter,
    Watchdog,
    alive_nodes,
    describe_stall,
)
from pipeline.stages import decode_batch, finish_batch
from pipeline.workers import ProposalWorker, RefinerWorker, proposal_kwargs, refiner_kwargs

__all__ = ["StagePlan", "plan_stages", "init_ray", "shutdown_ray", "run_refine", "RunResult", "format_run",
           "JobStalledError"]


class _DropNotices(logging.Filter):
    """Drops log records whose message starts with one of ``starts`` (Ray's notices about
    choices this job made on purpose, which users took for errors)."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# the local Ray we start keeps token auth on (Ray's default) and we show our own progress bar
_QUIET = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators disabled"),
}



def _gpu_env(gpus: float) -> dict:
    """Ray remote args of a stage's actors: GPU actors start with ``GPU_ACTOR_ENV``."""
    from pipeline.refine.gpu_memory import GPU_ACTOR_ENV

    return {"runtime_env": {"env_vars": dict(GPU_ACTOR_ENV)}} if gpus > 0 else {}

def quiet_ray_notices() -> None:
    """Silence the notices of `_QUIET` (idempotent); every other Ray message still shows."""
    for name, starts in _QUIET.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in log.filters):
            log.addFilter(_DropNotices(*starts))


_REAPER = None  # pipeline.reaper sentinel of the local Ray this process started


def init_ray(cfg: RayConfig) -> bool:
    """The one way jobs reach Ray: an already initialised Ray, ``ray.address`` / $RAY_ADDRESS,
    or a local Ray started in-process (with a `pipeline.reaper` sentinel that stops it if this
    process dies without `shutdown_ray`). Returns True when this call started or joined it;
    the caller then calls ``shutdown_ray(started)``."""
    global _REAPER
    import ray

    quiet_ray_notices()
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        from pipeline.reaper import watch

        ray.init(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_memory,
            include_dashboard=False,
        )
        _REAPER = watch()
    return True


def shutdown_ray(started: bool) -> None:
    """Disconnect (and stop the local Ray) if ``init_ray`` returned True."""
    global _REAPER
    if not started:
        return
    import ray

    if _REAPER is not None:
        _REAPER.close()
        _REAPER = None
    ray.shutdown()


def _static_fields(cfg: RefineJobConfig, run_id: str) -> dict[str, Any]:
    from pipeline.io.weights import checkpoint_hash

    sam_model, sam_hash = _proposal_source(cfg) if cfg.uses_sam else (None, None)  # hashes SAM once
    return {
        "job_id": cfg.job_id,
        "run_id": run_id,
        "method": cfg.method,
        "model_name": cfg.model.name,
        "model_hash": checkpoint_hash(cfg.model.checkpoint),
        "sam_model": sam_model,
        "sam_hash": sam_hash,
        "decode_mode": cfg.refine.decode,
        "decode_stride": cfg.refine.stride if cfg.refine.decode == "strided" else None,
    }


def _proposal_source(cfg: RefineJobConfig) -> tuple[str, str]:
    """What the manifest records as ``sam_model`` and ``sam_hash``: the SAM model type and its
    checkpoint's hash, or ``regions:<algorithm>`` and the hash of the regions parameters."""
    if cfg.sam.proposals == "regions":
        from pipeline.sam.regions import RegionSettings

        settings = RegionSettings(**dataclasses.asdict(cfg.regions))
        return settings.describe(), settings.digest()
    from pipeline.io.weights import checkpoint_hash

    return cfg.sam.model_type, checkpoint_hash(cfg.sam.checkpoint)


def build_dataset(items: list[dict], cfg: RefineJobConfig, plan: StagePlan, static: dict[str, Any]):
    """The lazy Ray Data pipeline over ``items`` (``{"meta": json}`` refs); rows out: ``{"row": json}``."""
    import ray.data as rd

    bs = cfg.ray.batch_size
    per_block = max(1, math.ceil(len(items) / 10_000))
    ds = rd.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_block)))
    ds = ds.map_batches(
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
            **_gpu_env(plan.sam_gpus),
            compute=rd.ActorPoolStrategy(size=plan.sam_actors, **pool),
            fn_constructor_kwargs=proposal_kwargs(cfg, plan.torch_threads),
        )
    ds = ds.map_batches(
        RefinerWorker,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.actor_cpus,
        num_gpus=plan.refine_gpus,
        **_gpu_env(plan.refine_gpus),
        **({"memory": plan.refine_memory} if plan.refine_memory else {}),
        compute=rd.ActorPoolStrategy(size=plan.refine_actors, **pool),
        fn_constructor_kwargs=refiner_kwargs(cfg, plan.torch_threads),
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


def _progress(total: int, enabled: bool, unit: str = "img", desc: str = "refine"):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.5 if tty else 10.0,
        dynamic_ncols=tty,
    )


def _configure_data_context(cfg: RefineJobConfig) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    # start processing only when every pool actor is up (else the first actor may take
    # all the work before the others exist); a pool that cannot start fails clearly
    ctx.wait_for_min_actors_s = int(cfg.ray.actor_start_timeout_s)


def stream_rows(
    ds,
    cfg: RefineJobConfig,
    plan: StagePlan,
    nodes: list[tuple[float, float]],
    writer: ManifestWriter,
    total: int,
    *,
    on_row: Callable[[dict], None] | None = None,
    unit: str = "img",
    desc: str = "refine",
    counts_item: Callable[[dict], bool] = lambda row: True,
    stall_timeout_s: float | None = None,
) -> Counter:
    """Drive ``ds`` (rows ``{"row": json}``) to the end on the driver: every manifest row goes to
    ``writer``; rows for which ``counts_item(row)`` holds advance the progress bar and the
    returned status counts (``total`` of them expected). A watchdog flushes on a timer and fails
    the job with JobStalledError when nothing finishes for ``stall_timeout_s`` (default
    ``ray.stall_timeout_s``); SIGTERM flushes and exits 143."""
    import ray

    stall_s = cfg.ray.stall_timeout_s if stall_timeout_s is None else stall_timeout_s
    counts: Counter = Counter()
    bar = _progress(total, cfg.ray.progress, unit, desc)
    with DropRayNotices(), DriverSignals() as sig:
        describe = lambda idle: describe_stall(idle, stall_s, plan, nodes,  # noqa: E731
                                                sum(counts.values()), total)
        dog = Watchdog(writer, stall_s, describe, interrupt=sig.active,
                        startup_s=cfg.ray.actor_start_timeout_s)
        dog.start()
        try:
            for out in ds.iter_rows():
                row = json.loads(out["row"])
                dog.progress(row)
                if not writer.add(row):
                    continue
                if counts_item(row):
                    counts[row["status"]] += 1
                    bar.update(1)
                    bar.set_postfix(ok=counts["ok"], failed=counts["error"], refresh=False)
                if on_row is not None:
                    on_row(row)
        except ray.exceptions.GetTimeoutError as exc:  # Ray Data: the pool's actors did not start
            if dog.rows:
                raise
            why = f"model actors did not start within ray.actor_start_timeout_s = " \
                  f"{cfg.ray.actor_start_timeout_s:g} s ({exc}); "
            raise JobStalledError(why + describe(time.monotonic() - dog.last_progress)) from None
        except KeyboardInterrupt:
            if dog.stalled is not None:
                raise JobStalledError(dog.stalled) from None
            if sig.received == signal.SIGTERM:  # flush (finally), exit like an unhandled SIGTERM
                raise SystemExit(128 + signal.SIGTERM) from None
            raise  # a real Ctrl-C
        finally:
            dog.stop.set()
            bar.close()
            writer.flush()
    return counts


def run_refine(cfg: RefineJobConfig, *, on_row: Callable[[dict], None] | None = None) -> RunResult:
    """Run a refine job to completion and return its result (the manifest is on storage).

    on_row(row) is called on the driver for each manifest row as it arrives (progress hooks).
    """
    import ray

    from pipeline.io import list_samples, read_manifest, resume_state
    from pipeline.summary import summarize_manifest

    t_start = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
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
    counts = Counter()
    plan = None
    if items:
        static = _static_fields(cfg, run_id)
        started = init_ray(cfg.ray)
        try:
            res = ray.cluster_resources()
            nodes = alive_nodes()
            plan = plan_job(cfg, res, nodes)
            _configure_data_context(cfg)
            ds = build_dataset(items, cfg, plan, static)
            counts = stream_rows(ds, cfg, plan, nodes, writer, len(items), on_row=on_row)
        finally:
            shutdown_ray(started)
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
