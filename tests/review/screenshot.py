"""The README's screenshot of a Label Studio review task, made from the demo's output:

    make review-screenshot          # playwright into .venv-labelstudio, make demo, then:
    .venv/bin/python -m tests.review.screenshot --demo out/demo --out docs/review_label_studio.png

``samsr review export`` of the demo's least-trusted object -> a real Label Studio from
``.venv-labelstudio`` on 127.0.0.1 (SQLite in a temp dir, stopped by its process group:
tests/review/ls_server.py) -> tests/review/ls_screenshot.py (that venv, with playwright driving
Debian's Chromium) logs in and captures the task's labeling page with its coarse and refined
pre-annotations -> the PNG quantised to 256 colours (a small file to commit).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from jobs import cli
from tests.review.ls_server import EMAIL, LEGACY_TOKEN, LS_VENV, PASSWORD, running_label_studio

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("ls_screenshot.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.review.screenshot", description=__doc__.splitlines()[0])
    p.add_argument("--demo", default=str(ROOT / "out" / "demo"), help="a finished job's output (make demo)")
    p.add_argument("--out", default=str(ROOT / "docs" / "review_label_studio.png"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    a = p.parse_args(argv)
    # SIGTERM ends this process through SystemExit, so Label Studio is stopped on the way out too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not Path(a.chromium).exists():
        p.error(f"{a.chromium} is missing: `apt-get install -y chromium` (Debian's)")
    demo = Path(a.demo).resolve()
    if not (demo / "manifest").is_dir():
        p.error(f"{demo} holds no manifest: run `make demo` first")
    with tempfile.TemporaryDirectory(prefix="samsr-review-shot-") as tmp:
        dest = Path(tmp) / "review"
        if cli.main(["review", "export", str(demo), "--to", "label-studio", "--worst", "1",
                     "--dest", str(dest)]) != 0:
            return 1
        key = json.loads((dest / "tasks.json").read_text())[0]["data"]["samsr_key"]
        raw = Path(tmp) / "shot.png"
        with running_label_studio(Path(tmp) / "label-studio") as (url, started_s):
            print(f"label-studio answered /health after {started_s:.0f} s")
            res = subprocess.run([str(LS_VENV / "bin" / "python"), str(DRIVER), "--url", url,
                                  "--legacy-token", LEGACY_TOKEN, "--email", EMAIL, "--password", PASSWORD,
                                  "--config", str(dest / "config.xml"), "--tasks", str(dest / "tasks.json"),
                                  "--key", key, "--out", str(raw), "--chromium", a.chromium],
                                 capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-4000:], file=sys.stderr)
                return 1
            print(res.stdout.strip().splitlines()[-1])
        Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            a.out, optimize=True)
    print(f"{key} -> {a.out} ({Path(a.out).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
