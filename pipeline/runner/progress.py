"""Every job driver's progress machinery (no Ray Data): the manifest writer, the watchdog that
flushes rows on a timer and fails a stalled job, and the signals that stop the driver cleanly.

Used by every job through :func:`pipeline.runner.job.stream_rows`; the rules are in the module
docstring of ``pipeline.runner.refine``.
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

from pipeline.runner.cluster import alive_nodes
from pipeline.runner.plan import StagePlan

__all__ = ["JobStalledError", "ManifestWriter", "Watchdog", "Beacon", "WorkBeat", "beat_period",
           "DriverSignals", "DriverInterrupt",
           "describe_stall", "DropRayNotices", "RAY_NOTICE_LINES",
           "shorten_worker_death"]


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
    limit also allows ``startup_s`` for the model actors to load. A worker still making progress
    on a long sample (``beat_idle``: seconds since a worker's last :class:`WorkBeat`, under the
    limit) counts as progress: one 16k image may take longer than the limit on a CPU.
    """

    def __init__(self, writer: ManifestWriter, stall_s: float, describe: Callable[[float], str],
                 interrupt: bool, tick_s: float = 1.0, startup_s: float = 0.0,
                 beat_idle: Callable[[], float | None] | None = None) -> None:
        super().__init__(name="samsr-watchdog", daemon=True)
        self.writer, self.stall_s, self.describe = writer, stall_s, describe
        self.interrupt, self.tick_s, self.startup_s = interrupt, tick_s, startup_s
        # seconds since a worker last reported refinement progress (Beacon.idle_s), None: unknown
        self.beat_idle = beat_idle
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

    def _worker_progress(self) -> bool:
        """Whether a worker reported refinement progress within the limit (then the idle clock
        restarts from that report, so ``beat_idle`` is asked only when the limit is reached)."""
        now = time.monotonic()
        if self.beat_idle is None:
            return False
        try:
            beat = self.beat_idle()
        except Exception:  # the beacon's node is gone: rows alone decide
            return False
        if beat is None or beat >= self.limit():
            return False
        self.last_progress = max(self.last_progress, now - beat)
        return True

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
            if idle >= self.limit() and not self._worker_progress():
                self.stalled = self.describe(idle)
                if self.interrupt:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                else:
                    print(f"[samsr] job stalled: {self.stalled}", file=sys.stderr, flush=True)
                return


def beat_period(stall_s: float) -> float:
    """How often a worker reports refinement progress: a quarter of the stall limit, at most 15 s."""
    return min(15.0, stall_s / 4.0)


class Beacon:
    """Where the workers report refinement progress (a Ray actor of the job, ``num_cpus=0``,
    made by :func:`pipeline.runner.job.run_on_ray`): ``beat`` on each report, ``idle_s`` for the
    watchdog. Times are read on the beacon's own host, so clocks of other nodes do not matter."""

    def __init__(self) -> None:
        self.last: float | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def idle_s(self) -> float | None:
        return None if self.last is None else time.monotonic() - self.last


class WorkBeat(threading.Thread):
    """A worker's beat thread: every ``period_s`` it calls ``report()`` (the beacon's
    ``beat.remote``) if this process's refinement work counter (``pipeline.refine.heartbeat``)
    moved since its last look. Reporting errors are dropped: the rows still decide."""

    def __init__(self, report: Callable[[], Any], period_s: float,
                 ticks: Callable[[], int] | None = None) -> None:
        super().__init__(name="samsr-work-beat", daemon=True)
        if ticks is None:
            from pipeline.refine.heartbeat import ticks
        self.report, self.period_s, self.ticks = report, period_s, ticks
        self.stop = threading.Event()

    def run(self) -> None:
        seen = self.ticks()
        while not self.stop.wait(self.period_s):
            now = self.ticks()
            if now != seen:
                seen = now
                try:
                    self.report()
                except Exception:
                    pass


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


#: Lines Ray prints in the driver that a user cannot act on, each given as substrings that must
#: all be in the line: the C++ core worker's error-level notice about choices Ray Data makes itself
#: (its actor pools pass their constructor arguments through the object store and are
#: restartable), and the raylet's note that a task to a dead actor will be retried.
RAY_NOTICE_LINES: tuple[tuple[bytes, ...], ...] = (
    (b"core_worker.cc", b"has constructor arguments in the object store and max_restarts > 0"),
    (b"(raylet)", b"There are infinite retries remaining, so the task will be retried"),
)

_WORKER_DIED = (b"(raylet)", b"A worker died or was killed while executing a task")
_WORKER_PID = re.compile(rb"Worker PID: (\d+)")
_WORKER_EXIT = re.compile(rb"Worker exit type: ([A-Z_]+)")


def shorten_worker_death(line: bytes) -> bytes | None:
    """Ray's ~900-character notice that a worker died (it lists OOM, ``ray stop`` and crashes as
    possible causes) as one line that says what happens next; None for any other line."""
    if not all(p in line for p in _WORKER_DIED):
        return None
    pid, kind = _WORKER_PID.search(line), _WORKER_EXIT.search(line)
    pid_text = f" (PID {pid.group(1).decode()})" if pid else ""
    kind_text = f", exit type {kind.group(1).decode()}" if kind else ""
    return (f"samsr: a Ray worker process{pid_text} died or was killed{kind_text}; Ray restarts it and "
            "retries its batch, finished rows are kept. If it was not killed on purpose, look for OOM in "
            "dmesg and at the Ray logs (/tmp/ray/session_latest/logs).\n").encode()


_LINE_END = re.compile(rb"(?<=\n)")


class DropRayNotices:
    """While active, the process's standard error and output (file descriptors 2 and 1: C++
    libraries write to fd 2, Ray's log monitor prints its raylet notices to stdout) pass through
    pipes and threads that drop the lines matching ``patterns``, shorten Ray's worker-death
    notice (:func:`shorten_worker_death`) and forward everything else at once, partial lines
    (progress bars) included.

    Enter it after the local Ray has started (its daemons keep the real streams) and leave it
    before printing the job's result: on exit the descriptors are restored and the pumps drain
    the pipes.
    """

    def __init__(self, patterns: tuple[tuple[bytes, ...], ...] = RAY_NOTICE_LINES,
                 fds: tuple[int, ...] = (2, 1)) -> None:
        self.patterns = patterns
        self.fds = fds
        self.saved: dict[int, int] = {}
        self.threads: list[threading.Thread] = []
        self.dropped = 0

    def _drop(self, line: bytes) -> bool:
        return any(all(p in line for p in pattern) for pattern in self.patterns)

    def _pump(self, read_fd: int, out_fd: int) -> None:
        # never stop reading before EOF: a full pipe would block every writer of the descriptor
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
                        keep.append(shorten_worker_death(line) or line)
                if keep and not broken:
                    try:
                        os.write(out_fd, b"".join(keep))
                    except OSError:  # the real stream went away: keep draining, write nothing
                        broken = True
        finally:
            os.close(read_fd)

    @staticmethod
    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass

    def __enter__(self) -> DropRayNotices:
        self._flush()
        for fd in self.fds:
            try:
                saved = os.dup(fd)
            except OSError:  # no usable descriptor (embedded, closed): filter nothing there
                continue
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            self.saved[fd] = saved
            thread = threading.Thread(target=self._pump, args=(read_fd, saved), name=f"samsr-fd{fd}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        if not self.saved:
            return
        self._flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # closes the pipe's last write end: the pump reads to EOF and stops
        for thread in self.threads:
            thread.join(timeout=5)
        for saved in self.saved.values():
            os.close(saved)
        self.saved, self.threads = {}, []
