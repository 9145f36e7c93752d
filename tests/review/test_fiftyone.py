"""``samsr review export --to fiftyone`` loaded by the real FiftyOne (1.22.1, its own venv
``.venv-fiftyone`` that ``make test`` creates, with its bundled MongoDB in a temp dir): every
exported object is a sample with its image, the coarse / refined / ground-truth masks as
Segmentation labels FiftyOne reads back pixel for pixel, the manifest's metrics as sortable fields."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from jobs import cli
from pipeline.io import decode_mask, read_bytes, resize_mask, write_manifest_part, write_masks
from pipeline.review.fo_dataset import RESERVED, sample_fields
from pipeline.review.loop import manifest_rows
from pipeline.review.outputs import JobOutputs
from tests.helpers import encode_image
from tests.review.outputs import make_coco_job

ROOT = Path(__file__).resolve().parents[2]
FO_VENV = ROOT / ".venv-fiftyone"
DRIVER = Path(__file__).with_name("fo_driver.py")

pytestmark = pytest.mark.slow


def _refine_job(root: Path) -> str:
    """A samsr refine output with local images, coarse masks at half size, ground truth for two of
    three objects, trust scores, one refined mask turned down (candidates/)."""
    out, rows = str(root / "out"), []
    rng = np.random.default_rng(1)
    for i, trust in enumerate([0.8, 0.1, 0.4]):
        key = f"photo {i}"
        (root / "in").mkdir(exist_ok=True)
        img = root / "in" / f"p{i}_im.png"
        img.write_bytes(encode_image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "png"))
        coarse = np.zeros((24, 32), np.uint8)
        cv2.rectangle(coarse, (4, 4), (12 + 3 * i, 16), 255, -1)
        (root / "in" / f"p{i}_seg.png").write_bytes(cv2.imencode(".png", coarse)[1].tobytes())
        refined = np.zeros((48, 64), np.uint8)
        cv2.circle(refined, (30, 24), 8 + 2 * i, 255, -1)
        uri, _ = write_masks(out, key, refined, None)
        row = {"job_id": "j", "run_id": "r1", "attempt": 1, "key": key, "status": "ok", "image_uri": str(img),
               "mask_uri": str(root / "in" / f"p{i}_seg.png"), "output_uri": uri, "width": 64, "height": 48,
               "coarse_width": 32, "coarse_height": 24, "trust_score": trust, "change_iou": 0.3 + i / 10,
               "accepted": i != 1}
        if i != 2:
            gt = np.zeros((48, 64), np.uint8)
            gt[10:30, 20:40] = 255
            (root / "in" / f"p{i}_gt.png").write_bytes(cv2.imencode(".png", gt)[1].tobytes())
            row["gt_uri"] = str(root / "in" / f"p{i}_gt.png")
        if i == 1:  # turned down: the output holds the coarse mask, the refined one is a candidate
            row["candidate_uri"] = str(root / "out" / "candidates" / "photo 1.png")
            Path(row["candidate_uri"]).parent.mkdir(exist_ok=True)
            Path(row["candidate_uri"]).write_bytes(read_bytes(uri))
            write_masks(out, key, cv2.resize(coarse, (64, 48)), None)
        rows.append(row)
    write_manifest_part(rows, out, "r1")
    return out


def _digest(mask: np.ndarray) -> dict:
    """What fo_driver.py reports of a mask: shape, foreground pixels, SHA-1 of the packed bits."""
    return {"shape": list(mask.shape), "foreground": int(mask.sum()),
            "sha1": hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()}


def _load(dataset: Path, tmp_path: Path) -> dict:
    python = FO_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test` creates {FO_VENV.name} (or run `make fiftyone`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_")}
    env.update(FIFTYONE_DATABASE_DIR=str(tmp_path / "fo-db"), FIFTYONE_DO_NOT_TRACK="true",
               FIFTYONE_DEFAULT_DATASET_DIR=str(tmp_path / "fo-datasets"))
    res = subprocess.run([str(python), str(DRIVER), "--dataset", str(dataset)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_fiftyone_loads_the_exported_dataset(tmp_path, capsys):
    out = _refine_job(tmp_path)
    dest = tmp_path / "fo"
    assert cli.main(["review", "export", out, "--to", "fiftyone", "--worst", "3", "--dest", str(dest)]) == 0
    assert "3 samples (the 3 worst by trust)" in capsys.readouterr().out
    info = _load(dest, tmp_path)

    assert info["count"] == 3
    assert info["by_trust"] == ["photo 1", "photo 2", "photo 0"] and info["trust_below_half"] == ["photo 1",
                                                                                                   "photo 2"]
    fields = info["fields"]
    for name in ("coarse", "refined", "ground_truth"):
        assert fields[name] == "EmbeddedDocumentField(Segmentation)"
    assert (fields["trust_score"], fields["change_iou"], fields["accepted"], fields["key"]) == \
        ("FloatField", "FloatField", "BooleanField", "StringField")
    outputs = JobOutputs(out)
    rows = manifest_rows(out, list(info["samples"]))[0]
    for key, got in info["samples"].items():
        mrow = rows[key]
        assert got["filepath"] == str(tmp_path / "in" / f"p{key[-1]}_im.png")
        assert (got["trust_score"], got["accepted"]) == (mrow["trust_score"], mrow["accepted"])
        coarse, refined = outputs.masks(mrow)
        assert got["coarse"] == _digest(coarse) and got["refined"] == _digest(refined)
        if mrow.get("gt_uri"):
            gt = resize_mask(decode_mask(read_bytes(mrow["gt_uri"])), 48, 64) > 128
            assert got["ground_truth"] == _digest(gt)
        else:
            assert "ground_truth" not in got
    # the turned-down refinement is the refined label, not the coarse mask the output kept
    turned_down = info["samples"]["photo 1"]
    assert turned_down["refined"]["foreground"] != turned_down["coarse"]["foreground"]


def test_fiftyone_export_of_coco_instances_and_what_it_refuses(tmp_path, capsys):
    job = make_coco_job(str(tmp_path / "job"))
    dest = tmp_path / "fo"
    args = ["review", "export", job["out"], "--to", "fiftyone", "--worst", "2", "--dest", str(dest)]
    assert cli.main(args) == 0
    samples = json.loads((dest / "samples.json").read_text())["samples"]
    assert len(samples) == 2 and all(s["row_kind"] == "instance" and "annotation_id" in s for s in samples)
    for s in samples:
        for name in ("coarse", "refined"):
            mask = decode_mask(read_bytes(s[name]["mask_path"]))
            assert set(np.unique(mask)) <= {0, 255} and mask.shape == (s["height"], s["width"])
    # an S3 destination is refused before any work; FiftyOne reads a local directory
    code = cli.main(["review", "export", job["out"], "--to", "fiftyone", "--worst", "1", "--dest", "s3://b/x"])
    assert code == 1 and "FiftyOne reads a local dataset directory" in capsys.readouterr().err


def test_sample_fields_keep_scalars_and_leave_fiftyone_names():
    import datetime as dt

    row = {"key": "a", "trust_score": 0.5, "accepted": False, "attempt": 2, "gt_uri": None, "id": "x",
           "finished_at": dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.timezone.utc), "tags": "t"}
    assert sample_fields(row) == {"key": "a", "trust_score": 0.5, "accepted": False, "attempt": 2,
                                  "finished_at": "2026-12-07T01:02:03+00:00"}
    assert {"id", "filepath", "tags", "metadata"} <= RESERVED
