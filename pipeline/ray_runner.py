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
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import RayConfig, RefineJobConfig, with_absolute_paths
from pipeline.plan import StagePlan, plan_stages
from pipeline.stages import decode_batch, finish_batch, refine_batch, sam_batch

__all__ = ["StagePlan", "plan_stages", "init_ray", "run_refine", "RunResult", "format_run", "JobStalledError"]


class JobStalledError(RuntimeError):
    """No sample finished for the stall timeout; the message names the waiting stage."""


def init_ray(cfg: RayConfig) -> bool:
    """Connect to Ray: an already initialised Ray, ``ray.address`` / $RAY_ADDRESS, or a local
    Ray started in-process. Returns True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_memory,
            include_dashboard=False,
        )
    return True


def _device(requested: str) -> str:
    import ray
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available() and (requested == "cuda" or ray.get_gpu_ids()):
        return "cuda"
    if requested == "cuda":
        raise ValueError("refine.device: 'cuda' but this Ray worker sees no CUDA device")
    return "cpu"


class _RefinerActor:
    """One refiner per actor, loaded once: CPU state dict -> prepare_model -> device."""

    def __init__(
        self, model_name: str, checkpoint: str, options: dict, device: str, threads: int, soft: bool
    ) -> None:
        import ray
        import torch

        from pipeline.models import build_model
        from pipeline.refine import RefineOptions, prepare_model, refine

        torch.set_num_threads(threads)
        self.device = _device(device)
        self.options = RefineOptions(**options)
        model = build_model(model_name, checkpoint)  # torch.load(map_location="cpu") inside
        self.model = prepare_model(model, self.options).to(self.device)
        self.soft = soft
        self.node = ray.get_runtime_context().get_node_id()
        self._refine = refine

    def _run(self, image, mask, colors):
        return self._refine(self.model, image, mask, colors, options=self.options, device=self.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return refine_batch(batch, refine_fn=self._run, soft=self.soft, node=self.node)


class _SamActor:
    """One SAM automatic mask generator per actor."""

    def __init__(
        self,
        model_type: str,
        checkpoint: str,
        generator: dict,
        device: str,
        threads: int,
        method: str,
        working_size: int,
        seed: int,
        v1: dict,
    ) -> None:
        import torch

        from pipeline.sam import FastMaskGenerator, build_sam

        torch.set_num_threads(threads)
        sam = build_sam(model_type, checkpoint, device=_device(device))
        self.generator = FastMaskGenerator(sam, **generator)
        self.kwargs = dict(method=method, working_size=working_size, seed=seed, v1_kwargs=v1)

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            return sam_batch(batch, generator=self.generator, **self.kwargs)


def _refine_options(cfg: RefineJobConfig) -> dict:
    """RefineOptions keyword arguments (YAML lists become tuples)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.refine.options.items()}
    return {**options, "decode": cfg.refine.decode, "stride": cfg.refine.stride}


def _static_fields(cfg: RefineJobConfig, run_id: str) -> dict[str, Any]:
    from pipeline.models import checkpoint_hash

    return {
        "job_id": cfg.job_id,
        "run_id": run_id,
        "method": cfg.method,
        "model_name": cfg.model.name,
        "model_hash": checkpoint_hash(cfg.model.checkpoint),
        "sam_model": cfg.sam.model_type if cfg.uses_sam else None,
        "sam_hash": checkpoint_hash(cfg.sam.checkpoint) if cfg.uses_sam else None,
        "decode_mode": cfg.refine.decode,
        "decode_stride": cfg.refine.stride if cfg.refine.decode == "strided" else None,
    }


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
        s = cfg.sam
        generator = dict(
            points_per_side=s.points_per_side,
            points_per_batch=s.points_per_batch,
            pred_iou_thresh=s.pred_iou_thresh,
            stability_score_thresh=s.stability_score_thresh,
            box_nms_thresh=s.box_nms_thresh,
        )
        v1 = {k: v for k, v in dataclasses.asdict(cfg.v1).items() if v is not None}
        ds = ds.map_batches(
            _SamActor,
            batch_size=bs,
            batch_format="numpy",
            num_cpus=plan.actor_cpus,
            num_gpus=plan.sam_gpus,
            compute=rd.ActorPoolStrategy(size=plan.sam_actors, **pool),
            fn_constructor_kwargs=dict(
                model_type=s.model_type,
                checkpoint=s.checkpoint,
                generator=generator,
                device=cfg.refine.device,
                threads=plan.torch_threads,
                method=cfg.method,
                working_size=s.working_size,
                seed=s.seed,
                v1=v1,
            ),
        )
    ds = ds.map_batches(
        _RefinerActor,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.actor_cpus,
        num_gpus=plan.refine_gpus,
        compute=rd.ActorPoolStrategy(size=plan.refine_actors, **pool),
        fn_constructor_kwargs=dict(
            model_name=cfg.model.name,
            checkpoint=cfg.model.checkpoint,
            options=_refine_options(cfg),
            device=cfg.refine.device,
            threads=plan.torch_threads,
            soft=cfg.output.soft,
        ),
    )
    return ds.map_batches(
        finish_batch,
        batch_size=bs,
        batch_format="numpy",
        num_cpus=plan.task_cpus,
        compute=rd.TaskPoolStrategy(size=plan.finish_tasks),
        fn_kwargs={"output_prefix": cfg.output.prefix, "static": static},
    )


class _ManifestWriter:
    """Driver-side manifest parts ``part-<run_id>-<seq>.parquet``, one row per key per run."""

    def __init__(self, prefix: str, run_id: str, rows_per_part: int, flush_s: float) -> None:
        self.prefix, self.run_id = prefix, run_id
        self.rows_per_part, self.flush_s = rows_per_part, flush_s
        self.pending: list[dict] = []
        self.seen: set[str] = set()
        self.parts: list[str] = []
        self.duplicates = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()  # rows arrive on the driver's thread, timed flushes on the watchdog's

    def add(self, row: dict) -> bool:
        with self.lock:
            if row["key"] in self.seen:
                self.duplicates += 1
                return False
            self.seen.add(row["key"])
            self.pending.append(row)
            if len(self.pending) >= self.rows_per_part or time.monotonic() - self.last >= self.flush_s:
                self._flush()
            return True

    def flush_if_due(self) -> None:
        with self.lock:
            if self.pending and time.monotonic() - self.last >= self.flush_s:
                self._flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        from pipeline.io import write_manifest_part

        if self.pending:
            name = f"{self.run_id}-{len(self.parts):05d}"
            self.parts.append(write_manifest_part(self.pending, self.prefix, name))
            self.pending = []
        self.last = time.monotonic()


class _Interrupt(KeyboardInterrupt):
    """Raised in the driver's main thread by SIGTERM or by the watchdog (via SIGUSR1). A
    KeyboardInterrupt because that is what Ray lets through a blocking ``ray.get`` (it turns it
    into a KeyboardInterrupt of its own): callers check ``_signals.received``."""


class _Watchdog(threading.Thread):
    """Flushes due manifest rows on a timer and detects a job that stopped making progress.

    On a stall it records the reason and interrupts the main thread (SIGUSR1, whose handler
    :class:`_signals` installs) so that ``run_refine`` flushes and raises :class:`JobStalledError`.
    Outside the main thread it can only report the stall on stderr. Before the first row the
    limit also allows ``startup_s`` for the model actors to load.
    """

    def __init__(self, writer: _ManifestWriter, stall_s: float, describe: Callable[[float], str],
                 interrupt: bool, tick_s: float = 1.0, startup_s: float = 0.0) -> None:
        super().__init__(name="samsr-watchdog", daemon=True)
        self.writer, self.stall_s, self.describe = writer, stall_s, describe
        self.interrupt, self.tick_s, self.startup_s = interrupt, tick_s, startup_s
        self.last_progress = time.monotonic()
        self.rows = 0
        self.slowest_s = 0.0
        self.stalled: str | None = None
        self.stop = threading.Event()

    def progress(self, row: dict) -> None:
        self.last_progress = time.monotonic()
        self.rows += 1
        work = sum(float(row.get(k) or 0.0) for k in ("t_read_ms", "t_sam_ms", "t_refine_ms")) / 1000
        self.slowest_s = max(self.slowest_s, work)

    def limit(self) -> float:
        if self.rows == 0:
            return self.stall_s + self.startup_s
        return max(self.stall_s, 10.0 * self.slowest_s)

    def run(self) -> None:
        while not self.stop.wait(self.tick_s):
            try:
                self.writer.flush_if_due()
            except Exception as exc:  # storage hiccup: the next tick or the final flush retries
                print(f"[samsr] manifest flush failed, will retry: {exc!r}", file=sys.stderr, flush=True)
            idle = time.monotonic() - self.last_progress
            if idle >= self.limit():
                self.stalled = self.describe(idle)
                if self.interrupt:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                else:
                    print(f"[samsr] job stalled: {self.stalled}", file=sys.stderr, flush=True)
                return


class _signals:
    """SIGTERM and SIGUSR1 raise :class:`_Interrupt` in the main thread while the job runs
    (only when run_refine runs in the main thread; elsewhere nothing is installed)."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.saved: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        raise _Interrupt(signum)

    def __enter__(self) -> _signals:
        if self.active:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)


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

    @property
    def throughput(self) -> float:
        """Samples finished (ok or error) per second of this run's wall time."""
        return self.processed / self.wall_s if self.wall_s > 0 else 0.0


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        unit="img",
        desc="refine",
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.5 if tty else 10.0,
        dynamic_ncols=tty,
    )


def run_refine(cfg: RefineJobConfig, *, on_row: Callable[[dict], None] | None = None) -> RunResult:
    """Run a refine job to completion and return its result (the manifest is on storage).

    on_row(row) is called on the driver for each manifest row as it arrives (progress hooks).
    """
    import ray
    from ray.data import DataContext

    from pipeline.io import list_samples, read_manifest
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
    prior = read_manifest(cfg.output.prefix, columns=["key", "status"]).to_pylist()
    done = {r["key"] for r in prior if r["status"] == "ok"}
    attempts = Counter(r["key"] for r in prior)
    todo = [r for r in refs if r.key not in done]
    items = [
        {"meta": json.dumps({"key": r.key, "ref": r.to_dict(), "attempt": attempts[r.key] + 1})} for r in todo
    ]
    writer = _ManifestWriter(
        cfg.output.prefix, run_id, cfg.ray.manifest_rows_per_part, cfg.ray.manifest_flush_s
    )
    counts = Counter()
    plan = None
    if items:
        static = _static_fields(cfg, run_id)
        started = init_ray(cfg.ray)
        try:
            res = ray.cluster_resources()
            nodes = _alive_nodes()
            plan = plan_stages(
                res.get("CPU", 0.0), res.get("GPU", 0.0), cfg.uses_sam, cfg.ray, cfg.refine.threads,
                nodes=nodes,
            )
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.enable_operator_progress_bars = False
            # start processing only when every pool actor is up (else the first actor may take
            # all the work before the others exist); a pool that cannot start fails clearly
            ctx.wait_for_min_actors_s = int(cfg.ray.actor_start_timeout_s)
            ds = build_dataset(items, cfg, plan, static)
            bar = _progress(len(items), cfg.ray.progress)
            with _signals() as sig:
                describe = lambda idle: _describe_stall(idle, cfg.ray.stall_timeout_s, plan, nodes,  # noqa: E731
                                                        sum(counts.values()), len(items))
                dog = _Watchdog(writer, cfg.ray.stall_timeout_s, describe, interrupt=sig.active,
                                startup_s=cfg.ray.actor_start_timeout_s)
                dog.start()
                try:
                    for out in ds.iter_rows():
                        row = json.loads(out["row"])
                        dog.progress(row)
                        if not writer.add(row):
                            continue
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
        finally:
            if started:
                ray.shutdown()
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
    )


def _alive_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node."""
    import ray

    return [(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
            for n in ray.nodes() if n.get("Alive")]


def _describe_stall(idle: float, limit: float, plan: StagePlan, nodes: list[tuple[float, float]],
                    done: int, total: int) -> str:
    """Why the job stopped: which stage waits for which resource, from the cluster as it is now."""
    import ray

    try:
        free, now = ray.available_resources(), _alive_nodes()
    except Exception as exc:  # the cluster itself is unreachable
        return (f"no sample finished for {idle:.0f} s (ray.stall_timeout_s = {limit:g}); {done} of {total} "
                f"done; the Ray cluster does not answer ({exc!r})")
    cpu, gpu = free.get("CPU", 0.0), free.get("GPU", 0.0)
    waits = []
    if plan.refine_gpus > gpu or plan.sam_gpus > gpu:
        waits.append(f"model actors (each needs {max(plan.refine_gpus, plan.sam_gpus):g} GPU, "
                     f"{gpu:g} free)")
    if plan.actor_cpus > cpu:
        waits.append(f"model actors (each needs {plan.actor_cpus:g} CPU, {cpu:g} free)")
    if plan.task_cpus > cpu:
        waits.append(f"decode/finish tasks (each needs {plan.task_cpus:g} CPU, {cpu:g} free)")
    stage = "; ".join(waits) or "no stage lacks resources (see the Ray logs of the model actors)"
    return (f"no sample finished for {idle:.0f} s (ray.stall_timeout_s = {limit:g}); {done} of {total} done. "
            f"Nodes alive: {len(now)} of {len(nodes)} at start; free now: {cpu:g} CPU, {gpu:g} GPU of "
            f"{sum(c for c, _ in now):g} CPU, {sum(g for _, g in now):g} GPU. Waiting: {stage}. "
            "Finished rows are in the manifest; rerun the same command to resume once the cluster has "
            "the resources.")


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
    if result.duplicates_dropped:
        pairs.append(("duplicate rows dropped", result.duplicates_dropped))
    if s.get("mean_total_ms") is not None:
        pairs.append(("mean work per sample", f"{s['mean_total_ms']:.0f} ms"))
    return format_counts(pairs) + "\n\n" + format_quality_table(s)
