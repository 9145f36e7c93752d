"""A local multi-node Ray cluster of ``ray start --block`` processes (tests and benchmarks).

Each node is a ``ray start --block`` process in its own session with its own --num-cpus,
--memory and --object-store-memory and free ports, token auth on; it is stopped by PID
(SIGTERM makes ``ray start --block`` stop its node), never with ``ray stop``, so other Ray
instances on the machine are left alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["LocalCluster"]

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # anything of that node still alive: its process group is the one we started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """``nodes`` local Ray nodes (a head and workers), ``cpus`` CPUs each, token auth, on
    127.0.0.1 with free ports; logs and Ray's temp files under ``tmp`` (keep it short: Ray's
    socket paths are length-limited). ``start()``, then ``env`` + ``RAY_ADDRESS=gcs`` reach it;
    ``stop()`` ends every process it started (by PID, then by its unique auth token)."""

    def __init__(self, tmp: str, nodes: int = 2, cpus: float = 1, memory: int = 4_000_000_000,
                 object_store_memory: int = 300_000_000, root: str | None = None,
                 pin_cores: bool = False) -> None:
        if nodes < 1:
            raise ValueError(f"LocalCluster: nodes must be >= 1, got {nodes}")
        self.tmp, self.nodes, self.cpus = tmp, nodes, cpus
        # pin_cores: node i (all its processes) runs on core i of this process's cores, so that
        # nodes do not share physical cores (a scaling measurement on one machine)
        self.cores = sorted(os.sched_getaffinity(0)) if pin_cores else None
        self.memory, self.object_store_memory = memory, object_store_memory
        root = root or str(ROOT)
        self.gcs = f"127.0.0.1:{_free_port()}"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(16),
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=root,
        )
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> None:
        pin = None
        if self.cores is not None:
            core = self.cores[len(self.procs) % len(self.cores)]
            pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
        common = [
            "--block",
            f"--num-cpus={self.cpus:g}",
            f"--memory={self.memory}",
            f"--object-store-memory={self.object_store_memory}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        with open(Path(self.tmp) / f"{name}.log", "wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [RAY, "start", *args, *common],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.tmp,
                    preexec_fn=pin,
                )
            )

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        port = self.gcs.rsplit(":", 1)[1]
        dash_port = self.dashboard.rsplit(":", 1)[1]
        self._start(
            "head",
            [
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                f"--ray-client-server-port={_free_port()}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--temp-dir={self.tmp}/head",
            ],
        )
        self._wait_port(int(port))
        for i in range(1, self.nodes):
            self._start(f"worker{i}", [f"--address={self.gcs}", "--node-ip-address=127.0.0.1"])
        self.python(
            "import ray, time\nray.init()\n"
            f"while len([n for n in ray.nodes() if n['Alive']]) < {self.nodes}: time.sleep(0.2)\n",
            timeout=120,
        )

    def _wait_port(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"ray head exited; see {self.tmp}/head.log")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"ray head did not open {port}; see {self.tmp}/head.log")

    def python(self, code: str, timeout: float = 120) -> str:
        env = dict(self.env, RAY_ADDRESS=self.gcs)
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode:
            raise RuntimeError(f"driver failed: {r.stderr[-3000:]}")
        return r.stdout

    def submit(self, *entrypoint: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``ray job submit`` (retried while the dashboard is still starting)."""
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run(
                [RAY, "job", "submit", "--address", self.dashboard, "--", *entrypoint],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.env["PYTHONPATH"],
            )
            if r.returncode == 0 or "Job '" in r.stdout or time.monotonic() > deadline:
                return r
            time.sleep(2)

    def kill_worker_node(self) -> None:
        """SIGKILL the first worker node: its ``ray start`` process, raylet and every worker under it."""
        root = psutil.Process(self.procs[1].pid)
        for p in [*root.children(recursive=True), root]:
            try:
                p.kill()
            except psutil.Error:
                pass

    def stop(self) -> None:
        _stop(list(reversed(self.procs)))
        # workers that left the nodes' process groups exit on their own once the raylets are gone;
        # any still alive is found by this cluster's unique token in its environment
        token = self.env["RAY_AUTH_TOKEN"]
        for p in psutil.process_iter():
            try:
                if p.environ().get("RAY_AUTH_TOKEN") == token:
                    p.kill()
            except psutil.Error:
                continue
