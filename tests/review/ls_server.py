"""Start a real Label Studio from its own venv (``.venv-labelstudio``, ``make labelstudio``) on
127.0.0.1 with SQLite in a given folder, and stop it by its process group. Used by the end-to-end
test (tests/review/test_label_studio.py) and the README's screenshot (tests/review/screenshot.py).

The first user is made from the environment (``LABEL_STUDIO_USERNAME`` / ``_PASSWORD`` /
``_USER_TOKEN``), with legacy tokens enabled so that token can make a personal access token
(``ls_driver.personal_token``); local files under / are served (``/data/local-files/?d=...``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LS_VENV", "EMAIL", "PASSWORD", "LEGACY_TOKEN", "START_TIMEOUT_S", "LabelStudioError",
           "running_label_studio"]

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = ROOT / ".venv-labelstudio"
EMAIL, PASSWORD = "reviewer@example.com", "review-pass-1234"
LEGACY_TOKEN = "5a3c0d1e9b7f4c2a8e6d0b1f3a5c7e9d2b4f6a8c"  # only to make a personal access token
START_TIMEOUT_S = 420


class LabelStudioError(RuntimeError):
    """Label Studio is missing, exited, or did not answer /health in time (the log's tail in the message)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_label_studio(data: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[tuple[str, float]]:
    """(base URL, seconds it took to answer /health) of a Label Studio whose data (SQLite, media,
    ``label-studio.log``) lives in ``data``; stopped by its process group on exit."""
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        raise LabelStudioError(f"{exe} is missing: `make test` creates {LS_VENV.name} "
                               "(or run `make labelstudio`)")
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), DJANGO_DB="sqlite", LABEL_STUDIO_USERNAME=EMAIL,
               LABEL_STUDIO_PASSWORD=PASSWORD, LABEL_STUDIO_USER_TOKEN=LEGACY_TOKEN,
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="/",
               SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false")
    log_path = data / "label-studio.log"
    log = open(log_path, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--port", str(port), "--internal-host",
                             "127.0.0.1", "--data-dir", str(data)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise LabelStudioError(f"label-studio exited with {proc.returncode}: "
                                       f"{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout_s:
                raise LabelStudioError(f"label-studio did not answer /health in {timeout_s:.0f} s: "
                                       f"{log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield url, time.monotonic() - t0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()
