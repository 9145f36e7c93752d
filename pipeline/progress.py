"""The refine driver's progress machinery (no Ray Data): the manifest writer, the watchdog that
flushes rows on a timer and fails a stalled job, and the signals that stop the driver cleanly.

Used by :func:`pipeline.ray_runner.run_refine`; the rules are in its module docstring.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.plan import StagePlan

__all__ = ["JobStalledError", "ManifestWriter", "Watchdog", "DriverSignals", "DriverInterrupt", "alive_nodes",
           "describe_stall", "DropStderrLines", "RAY_NOTICE_LINES"]


class JobStalledError(RuntimeError):
    """No sample finished for the stall timeout; the message names the waiting stage."""


class ManifestWriter:
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


class DriverInterrupt(KeyboardInterrupt):
    """Raised in the driver's main thread by SIGTERM or by the watchdog (via SIGUSR1). A
    KeyboardInterrupt because that is what Ray lets through a blocking ``ray.get`` (it turns it
    into a KeyboardInterrupt of its own): callers check ``DriverSignals.received``."""


class Watchdog(threading.Thread):
    """Flushes due manifest rows on a timer and detects a job that stopped making progress.

    On a stall it records the reason and interrupts the main thread (SIGUSR1, whose handler
    :class:`DriverSignals` installs) so that ``run_refine`` flushes and raises :class:`JobStalledError`.
    Outside the main thread it can only report the stall on stderr. Before the first row the
    limit also allows ``startup_s`` for the model actors to load.
    """

    def __init__(self, writer: ManifestWriter, stall_s: float, describe: Callable[[float], str],
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


class DriverSignals:
    """SIGTERM and SIGUSR1 raise :class:`DriverInterrupt` in the main thread while the job runs
    (only when run_refine runs in the main thread; elsewhere nothing is installed)."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.saved: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        raise DriverInterrupt(signum)

    def __enter__(self) -> DriverSignals:
        if self.active:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)


def alive_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node."""
    import ray

    return [(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
            for n in ray.nodes() if n.get("Alive")]


def describe_stall(idle: float, limit: float, plan: StagePlan, nodes: list[tuple[float, float]],
                    done: int, total: int) -> str:
    """Why the job stopped: which stage waits for which resource, from the cluster as it is now."""
    import ray

    try:
        free, now = ray.available_resources(), alive_nodes()
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


#: Lines Ray's C++ core worker prints at error level in the driver for choices Ray Data makes
#: itself (its actor pools pass their constructor arguments through the object store and are
#: restartable); nothing a user can act on. Each entry: substrings that must all be in the line.
RAY_NOTICE_LINES: tuple[tuple[bytes, ...], ...] = (
    (b"core_worker.cc", b"has constructor arguments in the object store and max_restarts > 0"),
)


_LINE_END = re.compile(rb"(?<=\n)")


class DropStderrLines:
    """While active, the process's standard error (file descriptor 2, where C++ libraries
    write) passes through a pipe and a thread that drops the lines matching ``patterns`` and
    forwards everything else at once, partial lines (progress bars) included.

    Enter it after the local Ray has started (its daemons keep the real stderr) and leave it
    before printing the job's result: on exit fd 2 is restored and the pump drains the pipe.
    """

    def __init__(self, patterns: tuple[tuple[bytes, ...], ...] = RAY_NOTICE_LINES) -> None:
        self.patterns = patterns
        self.saved: int | None = None
        self.thread: threading.Thread | None = None
        self.dropped = 0

    def _drop(self, line: bytes) -> bool:
        return any(all(p in line for p in pattern) for pattern in self.patterns)

    def _pump(self, read_fd: int, out_fd: int) -> None:
        # never stop reading before EOF: a full pipe would block every writer of fd 2
        broken = False
        try:
            while True:
                try:
                    chunk = os.read(read_fd, 65536)
                except InterruptedError:
                    continue
                if not chunk:
                    return
                keep = []
                for line in _LINE_END.split(chunk):  # ends at \n only: a progress bar's \r stays inside
                    if not line:
                        continue
                    if self._drop(line):
                        self.dropped += 1
                    else:
                        keep.append(line)
                if keep and not broken:
                    try:
                        os.write(out_fd, b"".join(keep))
                    except OSError:  # the real stderr went away: keep draining, write nothing
                        broken = True
        finally:
            os.close(read_fd)

    def __enter__(self) -> DropStderrLines:
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            read_fd, write_fd = os.pipe()
        except (OSError, ValueError):  # no usable fd 2 (embedded, closed): filter nothing
            self.saved = None
            return self
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, args=(read_fd, self.saved), name="samsr-stderr",
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the pump reads to EOF and stops
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.close(self.saved)
        self.saved = None
