"""The driver's manifest timer and progress watchdog (no Ray): rows are written on time without
new rows arriving, and a stall interrupts the main thread with the reason."""

from __future__ import annotations

import time

import pytest

from pipeline.io import read_manifest
from pipeline.runner.progress import DriverInterrupt, DriverSignals, ManifestWriter, Watchdog


def _row(key: str, ms: float = 10.0) -> dict:
    return {"job_id": "j", "key": key, "status": "ok", "t_read_ms": ms, "t_refine_ms": ms}


def test_rows_are_flushed_on_the_timer_without_new_rows(tmp_path):
    out = str(tmp_path / "out")
    writer = ManifestWriter(out, "run", rows_per_part=1000, flush_s=0.3)
    dog = Watchdog(writer, stall_s=60, describe=lambda idle: "x", interrupt=False, tick_s=0.05)
    dog.start()
    try:
        writer.add(_row("a"))
        writer.add(_row("b"))
        deadline = time.monotonic() + 20
        while not writer.parts and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop.set()
        dog.join()
    assert len(writer.parts) == 1 and not writer.pending
    assert sorted(read_manifest(out).column("key").to_pylist()) == ["a", "b"]
    assert writer.add(_row("a")) is False and writer.duplicates == 1


def test_a_stall_interrupts_the_main_thread_with_the_reason(tmp_path):
    writer = ManifestWriter(str(tmp_path / "out"), "run", rows_per_part=1000, flush_s=999)
    with DriverSignals() as sig:
        assert sig.active
        dog = Watchdog(writer, stall_s=0.5, describe=lambda idle: f"stuck {idle:.1f}", interrupt=True,
                        tick_s=0.05)
        t = time.monotonic()
        with pytest.raises(DriverInterrupt):
            dog.start()
            while time.monotonic() - t < 30:
                time.sleep(0.01)
    assert dog.stalled is not None and dog.stalled.startswith("stuck ")
    assert 0.5 <= time.monotonic() - t < 30


def test_the_limit_scales_with_the_slowest_sample(tmp_path):
    writer = ManifestWriter(str(tmp_path / "out"), "run", rows_per_part=10, flush_s=999)
    dog = Watchdog(writer, stall_s=5, describe=lambda idle: "", interrupt=False, startup_s=60)
    assert dog.limit() == 65, "before the first row the models may still be loading"
    dog.progress(_row("a", ms=400))  # 0.8 s of work: 10x is 8 s
    assert dog.limit() == pytest.approx(8.0)
    dog.progress(_row("b", ms=100))
    assert dog.limit() == pytest.approx(8.0), "the slowest sample so far counts"


def test_stderr_filter_drops_rays_notice_lines_and_passes_everything_else(capfd):
    """C++ writes to file descriptor 2 directly: the filter drops Ray's error-level notice about
    actor constructor arguments and forwards every other byte at once (partial lines too)."""
    import os
    import sys

    from pipeline.runner.progress import DropRayNotices

    notice = (b"[2026-12-01 10:41:47,612 E 4300 4300] core_worker.cc:2465: Actor with class name: "
              b"'MapWorker(MapBatches(_RelabelActor))' and ID: 'abc' has constructor arguments in the "
              b"object store and max_restarts > 0. If the arguments in the object store go out of scope "
              b"or are lost, the actor restart will fail.\n")
    with DropRayNotices() as f:
        os.write(2, notice)
        os.write(2, b"[2026-12-01 10:41:48,000 E 4300 4300] core_worker.cc:99: a real error\n")
        os.write(2, b"\rrelabel: 1/2\rrelabel: 2/2\n")
        print("a Python warning", file=sys.stderr)
        os.write(2, notice[:-1] + b"\n" + b"tail without newline")
    err = capfd.readouterr().err
    assert "constructor arguments" not in err
    assert "core_worker.cc:99: a real error" in err and "\rrelabel: 1/2\rrelabel: 2/2\n" in err
    assert "a Python warning" in err and err.endswith("tail without newline")
    assert f.dropped == 2
    os.write(2, b"after\n")  # fd 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"


def test_stderr_filter_shortens_rays_worker_death_notice(capfd):
    """A killed worker: Ray's retry note is dropped and its long notice (which lists the OOM
    killer among possible causes) becomes one line naming the PID and saying what happens next."""
    import os

    from pipeline.runner.progress import DropRayNotices, shorten_worker_death

    retry = (b"\x1b[33m(raylet)\x1b[0m Task MapWorker(MapBatches(RefinerWorker)).submit failed. There are "
             b"infinite retries remaining, so the task will be retried. Error: The actor is temporarily "
             b"unavailable: RpcError: RPC error: Socket closed rpc_code: 14\n")
    died = (b"\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an unexpected "
            b"system error. To troubleshoot the problem, check the logs for the dead worker. Worker IP "
            b"address: 192.0.2.2 Worker port: 33199 Worker PID: 16913 Worker exit type: SYSTEM_ERROR Worker "
            b"exit detail: Worker unexpectedly exits with a connection error code 2. End of file. Some "
            b"common causes include: (1) the process was killed by the OOM killer due to high memory usage, "
            b"(2) the node was shut down, or (3) the worker crashed unexpectedly due to SIGSEGV.\n")
    with DropRayNotices() as f:  # Ray's log monitor prints raylet notices to stdout
        os.write(1, retry)
        os.write(1, died)
        os.write(1, b"(raylet) something else\n")
        os.write(2, died)
    out, err = capfd.readouterr()
    assert "retries remaining" not in out and "OOM killer" not in out + err and f.dropped == 1
    short = shorten_worker_death(died).decode()
    assert out == short + "(raylet) something else\n" and err == short
    assert "PID 16913" in short and "exit type SYSTEM_ERROR" in short and short.count("\n") == 1
    assert shorten_worker_death(b"(raylet) something else\n") is None


def test_a_worker_still_making_progress_keeps_the_job_alive(tmp_path):
    """One long sample: no row for longer than the limit, but the workers' beats are fresh, so
    it is not a stall; once the beats stop too (a hung refinement), it is."""
    from pipeline.runner.progress import Beacon

    writer = ManifestWriter(str(tmp_path / "out"), "run", rows_per_part=1000, flush_s=999)
    beacon = Beacon()
    assert beacon.idle_s() is None
    dog = Watchdog(writer, stall_s=0.6, describe=lambda idle: f"stuck {idle:.1f}", interrupt=False,
                   tick_s=0.05, beat_idle=beacon.idle_s)
    dog.start()
    try:
        t = time.monotonic()
        while time.monotonic() - t < 2.0:  # > 3x the limit with beats every 0.1 s
            beacon.beat()
            time.sleep(0.1)
        assert dog.is_alive() and dog.stalled is None
        dog.join(timeout=20)  # beats stop: stalled within the limit
    finally:
        dog.stop.set()
    assert dog.stalled is not None and dog.stalled.startswith("stuck ")
    assert time.monotonic() - t < 10


def test_stale_or_unreachable_beats_do_not_hide_a_stall(tmp_path):
    writer = ManifestWriter(str(tmp_path / "out"), "run", rows_per_part=1000, flush_s=999)

    def gone():
        raise RuntimeError("the beacon's node died")

    for beat_idle in (lambda: 99.0, lambda: None, gone):
        dog = Watchdog(writer, stall_s=0.3, describe=lambda idle: "stuck", interrupt=False, tick_s=0.05,
                       beat_idle=beat_idle)
        dog.start()
        dog.join(timeout=20)
        assert dog.stalled == "stuck"


def test_a_work_beat_reports_only_when_work_was_done():
    from pipeline.runner.progress import WorkBeat, beat_period

    assert beat_period(300) == 15.0 and beat_period(8) == 2.0
    work, reports = [0], []
    beat = WorkBeat(lambda: reports.append(work[0]), period_s=0.05, ticks=lambda: work[0])
    beat.start()
    try:
        time.sleep(0.5)
        assert reports == [], "no work, no report"
        work[0] = 3
        deadline = time.monotonic() + 10
        while not reports and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert reports == [3], "one report per change of the counter"
    finally:
        beat.stop.set()
        beat.join()
