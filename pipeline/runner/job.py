"""The skeleton every Ray job of samsr follows, in one place:

    plan (driver, no Ray) -> init (start or join Ray) -> record (rows the driver writes itself)
      -> stream rows (the job's Ray Data pipeline, driven to the end; each row to the manifest
         writer) -> flush -> summary (read back from the manifest)

:func:`run_on_ray` is the init / plan-the-stages / stream / shutdown part, shared by
``samsr refine`` (``pipeline.runner.refine``) and ``samsr relabel`` (``pipeline.runner.relabel``);
:func:`static_fields` are the manifest fields every row of a run shares. The rules of progress,
stalls and signals are in ``pipeline.runner.progress``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pipeline.config import RefineJobConfig
from pipeline.runner.cluster import (
    alive_nodes,
    cluster_resources,
    configure_data_context,
    gpu_card_bytes,
    init_ray,
    shutdown_ray,
)
from pipeline.runner.plan import StagePlan, plan_job
from pipeline.runner.progress import (
    Beacon,
    DriverSignals,
    DropRayNotices,
    JobStalledError,
    ManifestWriter,
    Watchdog,
    describe_stall,
)

__all__ = ["new_run_id", "static_fields", "items_dataset", "gpu_env", "stream_rows", "run_on_ray"]


def new_run_id() -> str:
    """``<UTC time>-<6 hex>``: names this run's manifest parts."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def static_fields(cfg: RefineJobConfig, run_id: str) -> dict[str, Any]:
    """The manifest fields every row of this run shares (job, run, method, model and proposal
    source with their hashes, decoding mode)."""
    from pipeline.io.weights import checkpoint_hash

    sam_model, sam_hash = proposal_source(cfg) if cfg.uses_sam else (None, None)  # hashes SAM once
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


def proposal_source(cfg: RefineJobConfig) -> tuple[str, str]:
    """What the manifest records as ``sam_model`` and ``sam_hash``: the SAM model type and its
    checkpoint's hash, or ``regions:<algorithm>`` and the hash of the regions parameters."""
    if cfg.sam.proposals == "regions":
        from pipeline.sam.regions import RegionSettings

        settings = RegionSettings(**dataclasses.asdict(cfg.regions))
        return settings.describe(), settings.digest()
    from pipeline.io.weights import checkpoint_hash

    return cfg.sam.model_type, checkpoint_hash(cfg.sam.checkpoint)


def items_dataset(items: list[dict]):
    """The Ray dataset of the job's item refs (``{"meta": json}``), at most 10,000 blocks."""
    import ray.data as rd

    per_block = max(1, math.ceil(len(items) / 10_000))
    return rd.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_block)))


def gpu_env(gpus: float) -> dict:
    """Ray remote args of a stage's actors: GPU actors start with
    ``pipeline.refine.gpu_memory.GPU_ACTOR_ENV`` (CUDA's expandable segments); others with nothing."""
    from pipeline.refine.gpu_memory import GPU_ACTOR_ENV

    return {"runtime_env": {"env_vars": dict(GPU_ACTOR_ENV)}} if gpus > 0 else {}


def _progress_bar(total: int, enabled: bool, unit: str = "img", desc: str = "refine"):
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
    beacon: Any = None,
) -> Counter:
    """Drive ``ds`` (rows ``{"row": json}``) to the end on the driver: every manifest row goes to
    ``writer``; rows for which ``counts_item(row)`` holds advance the progress bar and the
    returned status counts (``total`` of them expected). A watchdog flushes on a timer and fails
    the job with JobStalledError when nothing finishes for ``stall_timeout_s`` (default
    ``ray.stall_timeout_s``) and no worker reports progress to ``beacon`` (a long sample);
    SIGTERM flushes and exits 143."""
    import ray

    stall_s = cfg.ray.stall_timeout_s if stall_timeout_s is None else stall_timeout_s
    counts: Counter = Counter()
    bar = _progress_bar(total, cfg.ray.progress, unit, desc)
    with DropRayNotices(), DriverSignals() as sig:
        describe = lambda idle: describe_stall(idle, stall_s, plan, nodes,  # noqa: E731
                                                sum(counts.values()), total)
        beat_idle = None if beacon is None else lambda: ray.get(beacon.idle_s.remote(), timeout=5)
        dog = Watchdog(writer, stall_s, describe, interrupt=sig.active,
                        startup_s=cfg.ray.actor_start_timeout_s, beat_idle=beat_idle)
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


def _start_beacon():
    """The job's :class:`Beacon` actor, on the driver's node when it can (no CPU asked)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, max_restarts=0)(Beacon).options(scheduling_strategy=here).remote()


def _stop_beacon(beacon) -> None:
    import ray

    try:
        ray.kill(beacon)
    except Exception:  # already gone with its node
        pass


def run_on_ray(
    cfg: RefineJobConfig,
    items: list[dict],
    build: Callable[[list[dict], RefineJobConfig, StagePlan, Any], Any],
    writer: ManifestWriter,
    **stream_kwargs: Any,
) -> tuple[Counter, StagePlan | None]:
    """Start or join Ray, plan the stages for the cluster as it is (on GPUs with the smallest card's
    memory, ``ray.gpu_memory_gb`` or read from the GPU nodes), build the job's dataset
    (``build(items, cfg, plan, beacon)``: the model workers report progress to ``beacon``, a
    :class:`pipeline.runner.progress.Beacon` actor), stream its rows to ``writer``
    (:func:`stream_rows` with ``stream_kwargs``) and shut down what this call started. No items:
    Ray is not touched.
    Returns the status counts and the stage plan."""
    if not items:
        return Counter(), None
    started = init_ray(cfg.ray)
    try:
        nodes = alive_nodes()
        resources = cluster_resources()
        on_gpus = cfg.refine.device != "cpu" and resources.get("GPU", 0) > 0
        reads_cards = on_gpus and cfg.ray.gpu_memory_gb is None
        plan = plan_job(cfg, resources, nodes, gpu_card_bytes() if reads_cards else None)
        configure_data_context(cfg.ray.actor_start_timeout_s)
        beacon = _start_beacon()
        try:
            ds = build(items, cfg, plan, beacon)
            counts = stream_rows(ds, cfg, plan, nodes, writer, len(items), beacon=beacon, **stream_kwargs)
        finally:
            _stop_beacon(beacon)
    finally:
        shutdown_ray(started)
    return counts, plan
