"""Stop the local Ray a driver started, when the driver dies without stopping it (SIGKILL, OOM).

`ray.init()` without an address starts GCS, raylet, log monitor and, under the raylet, a
dashboard agent, a runtime-env agent and workers. When the driver is killed, Ray's own checks
stop the agents only about a minute later (measured: 60-65 s with Ray 2.60). `watch(pid)`
starts a tiny sentinel process joined to the driver by a pipe: the sentinel notes the driver's
descendants every ``interval`` seconds; when the pipe closes without the driver saying goodbye
(`Reaper.close`), i.e. the driver died, it SIGKILLs every noted process that still runs (same
PID *and* start time, so a reused PID is never touched). A driver that stops Ray itself calls
`Reaper.close()` first, and the sentinel exits without touching anything.

    python -m pipeline.runner.reaper DRIVER_PID   # what `watch` runs; reads the pipe on stdin
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

__all__ = ["Reaper", "watch"]

_BYE = b"bye\n"


class Reaper:
    """The driver's end of the pipe to a running sentinel."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def close(self) -> None:
        """Clean shutdown: tell the sentinel to exit without killing anything."""
        if self.proc.poll() is None and self.proc.stdin:
            try:
                self.proc.stdin.write(_BYE)
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def watch(pid: int | None = None, interval: float = 0.5) -> Reaper:
    """Start the sentinel for ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.runner.reaper", str(pid), str(interval)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a Ctrl-C there is not ours
    )
    return Reaper(proc)


def _descendants(pid: int) -> dict[int, float]:
    """PID -> start time of every descendant of ``pid`` except this sentinel (a child too)."""
    import psutil

    me = os.getpid()
    try:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True) if p.pid != me}
    except psutil.Error:
        return {}


def _kill(noted: dict[int, float]) -> None:
    import psutil

    for pid, started in noted.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3:
                p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def main(argv: list[str]) -> int:
    driver, interval = int(argv[0]), float(argv[1]) if len(argv) > 1 else 0.5
    noted: dict[int, float] = {}
    fd = sys.stdin.fileno()
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], interval)
        if ready:
            chunk = os.read(fd, 64)
            if chunk:
                data += chunk
                continue
            if data.endswith(_BYE):  # the driver stopped Ray itself
                return 0
            _kill(noted)  # EOF without goodbye: the driver is gone
            return 0
        noted.update(_descendants(driver))
        noted = {p: t for p, t in noted.items() if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
