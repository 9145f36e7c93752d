"""Screenshot the labeling page of one exported task in a running Label Studio, as a reviewer sees it.

Run with ``.venv-labelstudio/bin/python`` with ``playwright`` installed beside label-studio-sdk
(``make review-screenshot`` does both; tests/review/screenshot.py starts Label Studio):

    python tests/review/ls_screenshot.py --url URL --legacy-token T --email E --password P \\
        --config config.xml --tasks tasks.json --key KEY --out shot.png [--chromium /usr/bin/chromium]

1. a project with the labeling config and the tasks imported (``ls_driver.create_project``);
2. Debian's Chromium (headless, driven by playwright: its own browser download cannot work offline)
   logs in through the login form as the reviewer, opens the task of KEY in the labeling view,
   waits for the image and the pre-annotations (coarse and refined) to be drawn;
3. writes the page to OUT (PNG).

Prints one JSON line: project and task ids, and the predictions' model versions Label Studio lists.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from urllib.parse import unquote

from label_studio_sdk import LabelStudio
from ls_driver import create_project, personal_token
from playwright.sync_api import sync_playwright

LOCAL_FILES = "/data/local-files/?d="
# without the background-networking flags Chromium keeps trying the closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("url", "legacy-token", "email", "password", "config", "tasks", "key", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    a = p.parse_args()
    ls = LabelStudio(base_url=a.url, api_key=personal_token(a.url, a.legacy_token))
    project, _, tasks = create_project(ls, a.config, a.tasks)
    task = next(t for t in tasks if t.data["samsr_key"] == a.key)
    image = task.data["image"]
    if image.startswith(LOCAL_FILES):  # Label Studio serves a local file only under a local storage
        folder = "/" + posixpath.dirname(unquote(image[len(LOCAL_FILES):]))
        ls.import_storage.local.create(project=project.id, path=folder, title="images")
    versions = sorted(pr.model_version for pr in ls.predictions.list(task=task.id))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": a.width, "height": a.height})
        page.goto(f"{a.url}/user/login/")
        page.fill("input[name=email]", a.email)
        page.fill("input[name=password]", a.password)
        with page.expect_navigation():
            page.press("input[name=password]", "Enter")
        page.goto(f"{a.url}/projects/{project.id}/data?task={task.id}")
        page.wait_for_selector("canvas", timeout=120_000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(3000)  # the brush regions are drawn after the image has loaded
        page.screenshot(path=a.out)
        browser.close()
    print(json.dumps({"project": project.id, "task": task.id, "predictions": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
