"""A two-node local Ray cluster (``ray start --head`` + ``ray start --address``, token auth):
``ray job submit`` runs the refine job on both nodes; a killed driver loses nothing on rerun.

Each node is a ``ray start --block`` process in its own session with its own --memory and
--object-store-memory limits and ports; the module stops them by PID (SIGTERM makes
``ray start --block`` stop its node), never with ``ray stop``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.io import read_manifest
from tests.helpers import make_samples, write_layout

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


class Cluster:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.gcs = f"127.0.0.1:{_free_port()}"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(16),
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=str(ROOT),
        )
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> None:
        log = open(Path(self.tmp) / f"{name}.log", "wb")
        common = [
            "--block",
            "--num-cpus=1",
            "--memory=4000000000",
            "--object-store-memory=300000000",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        self.procs.append(
            subprocess.Popen(
                [RAY, "start", *args, *common],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.tmp,
            )
        )

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
        self._start("worker", [f"--address={self.gcs}", "--node-ip-address=127.0.0.1"])
        self.python(
            "import ray, time\nray.init()\n"
            "while len([n for n in ray.nodes() if n['Alive']]) < 2: time.sleep(0.2)\n",
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
                cwd=str(ROOT),
            )
            if r.returncode == 0 or "Job '" in r.stdout or time.monotonic() > deadline:
                return r
            time.sleep(2)

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node: its ``ray start`` process, raylet and every worker under it."""
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


def _cluster():
    tmp = tempfile.mkdtemp(prefix="samsr-rc-", dir="/tmp")  # short: Ray's socket paths are length-limited
    c = Cluster(tmp)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    yield from _cluster()


@pytest.fixture
def doomed_cluster():
    """A cluster of its own for a test that kills a node."""
    yield from _cluster()


def _config(path: Path, uri: str, out: str, checkpoint: str, **ray) -> str:
    lines = [
        f"input: {{uri: {uri}}}",
        f"output: {{prefix: {out}}}",
        f"model: {{name: crm_mnv2, checkpoint: {checkpoint}}}",
        "ray:",
    ]
    lines += [f"  {k}: {v}" for k, v in {"progress": "false", **ray}.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _node_ids(cluster: Cluster) -> set[str]:
    out = cluster.python(
        "import ray\nray.init()\nprint(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
    )
    return set(out.split())


def test_job_submit_runs_on_both_nodes(cluster, tmp_path, crm_checkpoint):
    # Big enough that refining a sample takes longer than decoding the next: with instant work
    # one idle actor (the one near the data) rightly takes every batch, and the test would be
    # about timing, not about the second node being used.
    samples = make_samples(8, 192, 256)
    uri = write_layout("prefix", str(tmp_path), samples)
    out = str(tmp_path / "out")
    config = _config(tmp_path / "job.yaml", uri, out, crm_checkpoint, refine_actors=2)
    r = cluster.submit(sys.executable, "-m", "jobs.refine", "--config", config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "processed this run      8 (ok 8, failed 0)" in r.stdout
    rows = read_manifest(out).to_pylist()
    assert sorted(x["key"] for x in rows) == [s["key"] for s in samples]
    assert all(x["status"] == "ok" for x in rows)
    nodes = {x["worker_node"] for x in rows}
    assert len(nodes) == 2 and nodes == _node_ids(cluster)


def test_driver_killed_then_rerun_processes_only_missing(cluster, tmp_path, crm_checkpoint):
    samples = make_samples(16, 96, 128)
    uri = write_layout("prefix", str(tmp_path), samples)
    out = tmp_path / "out"
    config = _config(tmp_path / "job.yaml", uri, str(out), crm_checkpoint, manifest_rows_per_part=1)
    env = dict(cluster.env, RAY_ADDRESS=cluster.gcs)
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.refine", "--config", config],
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "manifest").glob("part-*.parquet"))) < 3:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "driver made no progress"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)  # the driver dies mid-job
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    before = read_manifest(str(out)).to_pylist()
    done = {x["key"] for x in before if x["status"] == "ok"}
    assert 3 <= len(done) < len(samples), "the driver must die mid-job"

    r = cluster.submit(sys.executable, "-m", "jobs.refine", "--config", config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    missing = len(samples) - len(done)
    assert f"processed this run      {missing} (ok {missing}, failed 0)" in r.stdout
    rows = read_manifest(str(out)).to_pylist()
    ok = sorted(x["key"] for x in rows if x["status"] == "ok")
    assert ok == [s["key"] for s in samples]  # each sample exactly once


def _driver(cluster: Cluster, config: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.refine", "--config", config],
        env=dict(cluster.env, RAY_ADDRESS=cluster.gcs),
        cwd=str(ROOT),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_masks(out: Path, n: int, driver: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "masks").glob("*.png"))) < n:
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "driver made no progress"
        time.sleep(0.05)


def _finish(driver: subprocess.Popen, timeout: float) -> int:
    try:
        return driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_sigterm_flushes_every_finished_row(cluster, tmp_path, crm_checkpoint):
    """``ray job stop`` sends SIGTERM: rows the driver holds are written (flush timer far away),
    each with its mask; a rerun completes the rest, one ok row per key."""
    # after the actors warm up the rest of the job can take well under a second: when every mask
    # already exists at the check (the job is done or about to be), retry with a longer job
    for attempt, n in enumerate((24, 64, 160)):
        samples = make_samples(n, 96, 128, prefix=f"a{attempt}s")
        uri = write_layout("prefix", str(tmp_path / f"in{attempt}"), samples)
        out = tmp_path / f"out{attempt}"
        config = _config(tmp_path / f"job{attempt}.yaml", uri, str(out), crm_checkpoint,
                         manifest_flush_s=3600, manifest_rows_per_part=1000)
        log = tmp_path / f"driver{attempt}.log"
        driver = _driver(cluster, config, log)
        try:
            _wait_masks(out, 4, driver, log)
            time.sleep(1.0)  # the rows of those masks reach the driver
            done = len(list((out / "masks").glob("*.png"))) == n or driver.poll() is not None
            if done and attempt < 2:
                if driver.poll() is None:
                    driver.send_signal(signal.SIGTERM)
                    _finish(driver, 60)
                continue
            assert not list((out / "manifest").glob("part-*.parquet")), "nothing flushed before SIGTERM"
            driver.send_signal(signal.SIGTERM)
            rc = _finish(driver, 60)
            break
        finally:
            if driver.poll() is None:
                driver.kill()
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    rows = read_manifest(str(out)).to_pylist()
    assert len(rows) >= 3 and len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        assert (out / "masks" / f"{r['key']}.png").exists()
    r = cluster.submit(sys.executable, "-m", "jobs.refine", "--config", config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ok = sorted(x["key"] for x in read_manifest(str(out)).to_pylist() if x["status"] == "ok")
    assert ok == [s["key"] for s in samples]


HOG = """
import ray
ray.init(namespace="samsr-test")

@ray.remote
class Hog:
    def ping(self):
        return 1

h = Hog.options(name="hog", lifetime="detached", num_cpus={cpus},
                resources={{"node:__internal_head__": 0.001}}).remote()
ray.get(h.ping.remote())
"""
UNHOG = 'import ray\nray.init(namespace="samsr-test")\nray.kill(ray.get_actor("hog"))\n'


def test_losing_the_node_with_the_actor_and_the_task_outputs(doomed_cluster, tmp_path, crm_checkpoint):
    """Issue 14's hang: another tenant holds 0.9 of the head's CPU, so the refiner actor and the
    decode/finish tasks all run on the worker node. SIGKILL that node (raylet, actor, task
    outputs) and free the head: the job must finish on the head alone, the restarted actor next
    to the re-run tasks, with exactly one ok row and one mask per key, in bounded time."""
    samples = make_samples(24, 96, 128)
    uri = write_layout("prefix", str(tmp_path), samples)
    out = tmp_path / "out"
    config = _config(tmp_path / "job.yaml", uri, str(out), crm_checkpoint, stall_timeout_s=120,
                     actor_start_timeout_s=120,
                     manifest_rows_per_part=4)
    doomed_cluster.python(HOG.format(cpus=0.9))
    log = tmp_path / "driver.log"
    driver = _driver(doomed_cluster, config, log)
    try:
        _wait_masks(out, 4, driver, log)
        doomed_cluster.kill_worker_node()
        doomed_cluster.python(UNHOG)
        rc = _finish(driver, 400)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    rows = read_manifest(str(out)).to_pylist()
    assert sorted(r["key"] for r in rows if r["status"] == "ok") == [s["key"] for s in samples]
    assert len(rows) == len(samples), "exactly one row per key"
    for s in samples:
        assert (out / "masks" / f"{s['key']}.png").exists()
    nodes = {r["worker_node"] for r in rows}
    assert len(nodes) == 2, "the worker refined the first samples, the head the rest"
