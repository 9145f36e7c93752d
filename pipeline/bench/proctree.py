"""Peak resident memory of every process of a command's process tree (issue 32: "no process of a
refine job over 5 GiB").

    samsr benchmark memory --watch -- samsr refine --config configs/demo.yaml
    python -m pipeline.bench.proctree -- samsr refine --config configs/demo.yaml

The command runs as a child; every ``interval`` seconds (default 0.2) the RSS of it and of all
its descendants (a local Ray's GCS, raylet, dashboard and workers are children of the driver) is
read with psutil, and each process's largest sample is kept. A process that lives shorter than
one interval, or peaks between two samples, can be missed: the numbers are sampled peaks, a
lower bound of the true ones (the kernel's per-process VmHWM is read too where a process is still
alive at a sample, which catches peaks between samples of processes that are sampled at all).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ProcessPeak", "watch", "format_peaks", "main"]

GIB = 1024**3


@dataclass
class ProcessPeak:
    """The largest memory seen of one process: ``rss`` (sampled) and ``hwm`` (the kernel's
    VmHWM at the last sample, 0 where not readable); ``name`` a short form of its command line."""

    pid: int
    name: str
    rss: int = 0
    hwm: int = 0
    samples: int = 0

    @property
    def peak(self) -> int:
        return max(self.rss, self.hwm)


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _name(proc) -> str:
    """``ray::RefineActor.__call__``-style titles as they are; else the command line, shortened."""
    try:
        cmd = [part for part in proc.cmdline() if part]
    except Exception:  # noqa: BLE001 - gone, a zombie, or not ours
        cmd = []
    if not cmd:
        try:
            return proc.name()
        except Exception:  # noqa: BLE001
            return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0]
    text = " ".join(part.rsplit("/", 1)[-1] if i == 0 or part.startswith("/") else part
                    for i, part in enumerate(cmd))
    return text[:100]


def watch(cmd: Sequence[str], interval: float = 0.2) -> tuple[int, float, list[ProcessPeak]]:
    """Runs ``cmd`` (its output inherited); returns (exit code, wall seconds, one ProcessPeak per
    process seen, largest first)."""
    import psutil

    peaks: dict[tuple[int, float], ProcessPeak] = {}
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd))
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                key = (p.pid, p.create_time())
                rss = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            peak = peaks.get(key)
            if peak is None:
                peak = peaks[key] = ProcessPeak(p.pid, _name(p))
            elif peak.name.startswith(("ray::IDLE", "?")) or peak.samples % 50 == 0:
                peak.name = _name(p)  # Ray retitles a worker once it holds an actor or task
            peak.rss = max(peak.rss, rss)
            peak.hwm = max(peak.hwm, _hwm(p.pid))
            peak.samples += 1
        time.sleep(interval)
    wall = time.monotonic() - start
    return proc.returncode, wall, sorted(peaks.values(), key=lambda p: -p.peak)


def format_peaks(peaks: Sequence[ProcessPeak], top: int = 20) -> str:
    """Plain-text table: pid, peak (GiB), sampled RSS (GiB), samples, name; the ``top`` largest."""
    lines = [f"{'pid':>8} {'peak GiB':>8} {'rss GiB':>8} {'samples':>8}  process"]
    for p in peaks[:top]:
        lines.append(f"{p.pid:>8} {p.peak / GIB:>8.2f} {p.rss / GIB:>8.2f} {p.samples:>8}  {p.name}")
    if len(peaks) > top:
        lines.append(f"... {len(peaks) - top} more, each under {peaks[top - 1].peak / GIB:.2f} GiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="samsr benchmark memory --watch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples (default 0.2)")
    parser.add_argument("--limit-gb", type=float, default=None,
                        help="exit 1 when any process peaked above this many GiB")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given (put it after --)")
    code, wall, peaks = watch(cmd, args.interval)
    print(f"[watch] exit code {code}, {wall:.1f} s, {len(peaks)} processes; peak RSS per process:")
    print(format_peaks(peaks))
    over = [p for p in peaks if args.limit_gb is not None and p.peak > args.limit_gb * GIB]
    if over:
        print(f"[watch] {len(over)} process(es) over {args.limit_gb:g} GiB")
    return 1 if code or over else 0


if __name__ == "__main__":
    sys.exit(main())
