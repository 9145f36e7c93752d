"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1), fresh buckets and roots.

- ``s3_server`` (session): starts ``moto_server -H 127.0.0.1 -p <free port>`` from the venv,
  waits until it answers, sets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY = ``testing``,
  AWS_DEFAULT_REGION = ``us-east-1`` and AWS_ENDPOINT_URL, yields the endpoint URL, then stops
  the server by PID and restores the environment. Set before any ``ray.init`` in the same
  session so Ray workers inherit the variables.
- ``s3_bucket``: a fresh bucket per test, as ``s3://<name>``.
- ``memory_root``: a fresh ``memory://`` folder per test (removed afterwards).
- ``storage_root``: parametrised over ``local``, ``memory`` and ``s3``; yields a root URI
  (the S3 server only starts when an ``s3`` case runs).

Test-data builders live in ``tests/helpers.py`` (``from tests.helpers import ...``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so ``tests.helpers`` imports however pytest is started
    sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_binary() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError(f"moto_server not found next to {sys.executable}; install the dev extra")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL of a moto S3 server on 127.0.0.1, with AWS_* variables set for the session."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [_moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint}; see {log_path}") from None
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            mp.delenv("AWS_PROFILE", raising=False)
            yield endpoint
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server: ``s3://samsr-test-<hex>``."""
    import boto3

    name = f"samsr-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture
def memory_root():
    """A fresh ``memory://`` folder, removed after the test."""
    import fsspec

    root = f"memory://samsr-test-{uuid.uuid4().hex[:12]}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["local", "memory", "s3"])
def storage_root(request, tmp_path):
    """A root URI on each storage kind: a local folder, ``memory://...`` or ``s3://bucket``."""
    if request.param == "local":
        yield str(tmp_path / "root")
    elif request.param == "memory":
        yield request.getfixturevalue("memory_root")
    else:
        yield request.getfixturevalue("s3_bucket") + "/root"
