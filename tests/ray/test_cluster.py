"""A two-node local Ray cluster (``ray start --head`` + ``ray start --address``, token auth):
``ray job submit`` runs the refine job on both nodes; a killed driver loses nothing on rerun.

The cluster is :class:`pipeline.runner.local_cluster.LocalCluster`: each node a ``ray start --block``
process with its own limits and ports, stopped by PID, never with ``ray stop``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.io import read_manifest
from pipeline.runner.local_cluster import LocalCluster
from tests.helpers import make_samples, write_layout

ROOT = Path(__file__).resolve().parents[2]


def _cluster():
    tmp = tempfile.mkdtemp(prefix="samsr-rc-", dir="/tmp")  # short: Ray's socket paths are length-limited
    try:
        with LocalCluster(tmp) as c:
            yield c
    finally:
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


def _node_ids(cluster: LocalCluster) -> set[str]:
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


def _driver(cluster: LocalCluster, config: str, log: Path) -> subprocess.Popen:
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
