"""A driver killed with SIGKILL leaves no Ray process behind (pipeline.runner.reaper); a clean stop
kills nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
DRIVER = """
import sys, time
from pipeline.config import RayConfig
from pipeline.runner.cluster import init_ray, shutdown_ray
started = init_ray(RayConfig(num_cpus=1))
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker process exists too
print("ready", flush=True)
if sys.argv[1] == "clean":
    shutdown_ray(started)
    print("stopped", flush=True)
time.sleep(600)
"""


def _start(mode: str) -> tuple[subprocess.Popen, dict[int, str]]:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # the sentinel notes the descendants every 0.5 s
    family = {p.pid: p.name() for p in psutil.Process(proc.pid).children(recursive=True)}
    return proc, family


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_killed_driver_leaves_no_ray_process():
    proc, family = _start("kill")
    names = set(family.values())
    assert any("raylet" in n for n in names) and len(family) >= 5, names
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 15  # Ray alone leaves its agents for ~60 s
    while _alive(set(family)) and time.time() < deadline:
        time.sleep(0.5)
    left = _alive(set(family))
    for pid in left:  # never leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, [family[p] for p in left]


def test_clean_shutdown_tells_the_sentinel_to_stand_down():
    proc, _ = _start("clean")
    try:
        assert proc.stdout.readline().strip() == "stopped"
        sentinels = [p for p in psutil.process_iter(["cmdline"])
                     if p.info["cmdline"] and "pipeline.runner.reaper" in " ".join(p.info["cmdline"])
                     and p.info["cmdline"][-2] == str(proc.pid)]
        assert not sentinels  # it exited on goodbye, killing nothing
        assert proc.poll() is None  # the driver itself is untouched
    finally:
        proc.kill()
        proc.wait(timeout=30)
