"""The review loop against a real Label Studio (1.23.2, its own venv ``.venv-labelstudio`` that
``make test`` creates): started here on 127.0.0.1 with SQLite in a temp dir, driven through
``label-studio-sdk`` by ``tests/review/ls_driver.py`` (run with that venv's python), stopped by its
process group. Export -> project + tasks -> a reviewer's annotation through the API -> export ->
``samsr review import`` from the export URL -> the COCO file checked with pycocotools."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from jobs import cli
from pipeline.io import read_bytes
from pipeline.query import query
from pipeline.review.brush_rle import decode_mask
from tests.review.ls_server import EMAIL, LEGACY_TOKEN, LS_VENV, LabelStudioError, running_label_studio
from tests.review.outputs import make_coco_job

DRIVER = Path(__file__).with_name("ls_driver.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(base URL, seconds it took to answer /health); Label Studio stopped by PID afterwards."""
    try:
        with running_label_studio(tmp_path_factory.mktemp("label-studio")) as started:
            yield started
    except LabelStudioError as e:
        pytest.fail(str(e))


def _driver(*args: str) -> dict:
    res = subprocess.run([str(LS_VENV / "bin" / "python"), str(DRIVER), *args], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_review_loop_through_label_studio(label_studio, tmp_path, capsys):
    url, started_s = label_studio
    print(f"label-studio answered /health after {started_s:.0f} s")
    job = make_coco_job(str(tmp_path / "job"))
    out, dest = job["out"], str(tmp_path / "review")
    assert cli.main(["review", "export", out, "--to", "label-studio", "--worst", "2", "--dest", dest]) == 0
    tasks = json.loads(open(f"{dest}/tasks.json").read())
    assert len(tasks) == 2
    first = tasks[0]["data"]
    aid, h, w = first["samsr_annotation_id"], first["samsr_height"], first["samsr_width"]
    coarse, refined = (decode_mask(p["result"][0]["value"]["rle"], h, w) for p in tasks[0]["predictions"])
    # the reviewer's mask: the refined one moved 5 px right, with a notch cut out and a square added
    reviewer = np.roll(refined, 5, axis=1)
    ys, xs = np.nonzero(reviewer)
    reviewer[ys.min():ys.min() + 6, :] = False
    reviewer[2:10, 2:10] = True
    assert (reviewer != coarse).sum() > 100 and (reviewer != refined).sum() > 100
    mask_png = tmp_path / "reviewer.png"
    cv2.imwrite(str(mask_png), reviewer.astype(np.uint8) * 255)
    before = json.loads(read_bytes(job["output"]))

    info = _driver("--url", url, "--legacy-token", LEGACY_TOKEN, "--config", f"{dest}/config.xml",
                   "--tasks", f"{dest}/tasks.json", "--key", first["samsr_key"], "--mask", str(mask_png),
                   "--export", str(tmp_path / "export.json"), "--decoded", str(tmp_path))
    # Label Studio holds both tasks with both pre-annotations, and its own brush decoder reads ours
    assert info["tasks"] == 2 and info["predictions"] == [2, 2] and info["user"] == EMAIL
    assert info["predictions_decoded_equal"] is True
    for n, task in enumerate(tasks):  # Label Studio's decoder reads the masks samsr meant
        for pred in task["predictions"]:
            res = pred["result"][0]
            ours = decode_mask(res["value"]["rle"], res["original_height"], res["original_width"])
            theirs = cv2.imread(str(tmp_path / f"{n}-{pred['model_version']}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(theirs >= 128, ours) and ours.sum() > 50
    export_url = f"{url}/api/projects/{info['project']}/export?exportType=JSON"
    os.environ["LABEL_STUDIO_API_KEY"] = info["api_key"]
    try:
        code = cli.main(["review", "import", out, "--from", "label-studio", export_url])
    finally:
        del os.environ["LABEL_STUDIO_API_KEY"]
    io = capsys.readouterr()
    assert code == 0, io.err
    assert "1 corrected, 0 failed, 0 not reviewed" in io.out, io.out  # the API exports annotated tasks

    coco = COCO(job["output"])
    after = json.loads(read_bytes(job["output"]))
    assert [a["id"] for a in after["annotations"]] == [a["id"] for a in before["annotations"]]
    assert np.array_equal(coco.annToMask(coco.anns[aid]).astype(bool), reviewer)
    for a, b in zip(before["annotations"], after["annotations"]):
        if a["id"] == aid:
            assert {k: v for k, v in a.items() if k not in ("segmentation", "area", "bbox")} == \
                {k: v for k, v in b.items() if k not in ("segmentation", "area", "bbox")}
            assert b["area"] == int(reviewer.sum())
        else:
            assert a == b
    assert after["images"] == before["images"] and after["categories"] == before["categories"]
    key = first["samsr_key"]
    _, rows = query(out, f"SELECT source, reviewer, annotation_id FROM latest WHERE key = '{key}'")
    assert rows == [("human", EMAIL, aid)]
    # the export file the SDK wrote (every task) holds the same annotation: importing it again
    # changes nothing in the COCO file
    assert cli.main(["review", "import", out, "--from", "label-studio", str(tmp_path / "export.json")]) == 0
    assert "1 corrected, 0 failed, 1 not reviewed" in capsys.readouterr().out
    assert json.loads(read_bytes(job["output"])) == after
