"""samsr review on the other outputs: samsr refine masks (ranked by trust score) and relabeled
label maps (ranked by mBA gain with ground truth); image URLs for Label Studio."""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest
from PIL import Image

from jobs import cli
from pipeline.io import (
    decode_mask,
    encode_png,
    latest_rows,
    read_bytes,
    read_manifest,
    write_manifest_part,
    write_masks,
)
from pipeline.query import query
from pipeline.relabel.labelmaps import read_label_map, upsample_labels
from pipeline.review.brush_rle import decode_mask as decode_rle
from pipeline.review.brush_rle import encode_mask
from pipeline.review.tasks import image_url
from tests.helpers import encode_image, put
from tests.review.outputs import make_labelmap_job


def _export(out, dest, *args):
    assert cli.main(["review", "export", out, "--to", "label-studio", "--dest", dest, *args]) == 0
    return json.loads(open(f"{dest}/tasks.json").read())


def _import(out, path, tasks_and_masks, capsys):
    export = []
    for i, (task, mask) in enumerate(tasks_and_masks):
        h, w = mask.shape
        export.append({"id": i + 1, "data": task["data"], "annotations": [{
            "id": 50 + i, "completed_by": {"id": 2, "email": "ann@example.com"},
            "created_at": "2026-12-07T01:00:00Z",
            "result": [{"id": "x", "from_name": "mask", "to_name": "image", "type": "brushlabels",
                        "original_width": w, "original_height": h,
                        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": ["object"]}}]}]})
    path.write_text(json.dumps(export))
    code = cli.main(["review", "import", out, "--from", "label-studio", str(path)])
    res = capsys.readouterr()
    assert code == 0, res.err
    return res.out


def _refine_job(root: str) -> str:
    """A samsr refine output under ``root/out`` (any storage): images, coarse masks at half size,
    refined masks (one with a soft mask), manifest rows with trust scores."""
    out = f"{root}/out"
    rows = []
    rng = np.random.default_rng(0)
    for i, trust in enumerate([0.9, 0.2, 0.5, None]):
        key = f"img{i}"
        image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
        img_uri = put(f"{root}/in/{key}_im.png", encode_image(image, "png"))
        coarse = np.zeros((20, 30), np.uint8)
        cv2.circle(coarse, (15, 10), 6 + i, 255, -1)
        mask_uri = put(f"{root}/in/{key}_seg.png", encode_png(coarse))
        refined = np.zeros((40, 60), np.uint8)
        cv2.circle(refined, (31, 20), 10 + i, 255, -1)
        uri, soft = write_masks(out, key, refined, refined // 2 if i == 1 else None)
        rows.append({"job_id": "refine-job", "run_id": "r1", "attempt": 1, "key": key, "status": "ok",
                     "image_uri": img_uri, "mask_uri": mask_uri, "output_uri": uri, "soft_output_uri": soft,
                     "width": 60, "height": 40, "coarse_width": 30, "coarse_height": 20, "trust_score": trust,
                     "change_iou": 0.5})
    # img2's refined mask was turned down by the trust policy: the output holds the coarse one
    coarse2 = decode_mask(read_bytes(rows[2]["mask_uri"]))
    rows[2]["candidate_uri"] = put(f"{out}/candidates/img2.png", read_bytes(rows[2]["output_uri"]))
    rows[2]["output_uri"], _ = write_masks(out, "img2", cv2.resize(coarse2, (60, 40)), None)
    rows[2]["accepted"] = False
    write_manifest_part(rows, out, "r1")
    return out


@pytest.fixture
def refine_job(tmp_path):
    return _refine_job(str(tmp_path))


def test_images_on_s3_stay_there_or_are_presigned(s3_bucket, tmp_path, capsys):
    out = _refine_job(s3_bucket)
    tasks = _export(out, str(tmp_path / "t"), "--worst", "1")
    assert tasks[0]["data"]["image"] == f"{s3_bucket}/in/img1_im.png"
    signed = _export(out, str(tmp_path / "p"), "--worst", "1", "--presign", "600")[0]["data"]["image"]
    query_args = urllib.parse.parse_qs(urllib.parse.urlsplit(signed).query)
    assert signed.startswith("http") and "Signature" in query_args
    assert abs(int(query_args["Expires"][0]) - (time.time() + 600)) < 60

    with urllib.request.urlopen(signed, timeout=30) as r:  # the moto server serves it
        assert r.read() == read_bytes(f"{s3_bucket}/in/img1_im.png")
    fix = np.zeros((40, 60), bool)
    fix[3:20, 4:44] = True
    assert "1 corrected" in _import(out, tmp_path / "e.json", [(tasks[0], fix)], capsys)
    assert np.array_equal(decode_mask(read_bytes(f"{out}/masks/img1.png")) > 128, fix)
    assert read_bytes(f"{out}/review/machine/masks/img1.png") != read_bytes(f"{out}/masks/img1.png")


def test_refine_outputs_ranked_by_trust_and_corrected(refine_job, tmp_path, capsys):
    tasks = _export(refine_job, str(tmp_path / "t"), "--worst", "2")
    assert [t["data"]["samsr_key"] for t in tasks] == ["img1", "img2"]  # least trusted first
    assert tasks[0]["data"]["samsr_row_kind"] == "sample"
    coarse = decode_rle(tasks[0]["predictions"][0]["result"][0]["value"]["rle"], 40, 60)
    low = np.zeros((20, 30), np.uint8)
    cv2.circle(low, (15, 10), 7, 255, -1)
    assert np.array_equal(coarse, cv2.resize(low, (60, 40), interpolation=cv2.INTER_LINEAR) > 128)
    before = read_bytes(f"{refine_job}/masks/img1.png")
    fix = np.zeros((40, 60), bool)
    fix[5:30, 10:50] = True
    out = _import(refine_job, tmp_path / "e.json", [(tasks[0], fix)], capsys)
    assert "1 corrected, 0 failed" in out
    assert np.array_equal(decode_mask(read_bytes(f"{refine_job}/masks/img1.png")) > 128, fix)
    soft = np.asarray(Image.open(f"{refine_job}/soft/img1.png"))
    assert set(np.unique(soft)) == {0, 255} and np.array_equal(soft > 0, fix)
    assert read_bytes(f"{refine_job}/review/machine/masks/img1.png") == before
    row = {r["key"]: r for r in latest_rows(read_manifest(refine_job)).to_pylist()}["img1"]
    assert (row["source"], row["reviewer"], row["attempt"]) == ("human", "ann@example.com", 2)
    assert row["trust_score"] is None
    # reviewed objects leave the trust ranking (their rows have no score)
    assert [t["data"]["samsr_key"] for t in _export(refine_job, str(tmp_path / "t2"), "--worst", "2")] == \
        ["img2", "img0"]


def test_turned_down_refinement_is_the_refined_pre_annotation(refine_job, tmp_path):
    """accepted = false: the output holds the coarse mask; the reviewer is shown the refiner's
    turned-down mask (candidates/) beside it, not the coarse mask twice."""
    task = _export(refine_job, str(tmp_path / "t"), "--where", "key = 'img2'")[0]
    coarse, refined = (decode_rle(p["result"][0]["value"]["rle"], 40, 60) for p in task["predictions"])
    candidate = decode_mask(read_bytes(f"{refine_job}/candidates/img2.png")) > 128
    assert np.array_equal(refined, candidate) and (refined != coarse).sum() > 100
    assert np.array_equal(decode_mask(read_bytes(f"{refine_job}/masks/img2.png")) > 128, coarse)


def test_label_maps_ranked_by_gain_and_corrected(tmp_path, capsys):
    job = make_labelmap_job(str(tmp_path))
    out = job["out"]
    tasks = _export(out, str(tmp_path / "t"), "--worst", "3")
    _, ranked = query(out, "SELECT key FROM latest WHERE status = 'ok' AND mba_refined IS NOT NULL "
                      "ORDER BY mba_refined - mba_coarse, key LIMIT 3")
    assert [t["data"]["samsr_key"] for t in tasks] == [r[0] for r in ranked]
    task = next(t for t in tasks if t["data"]["samsr_category_id"] not in (0, 255))
    cls, key = task["data"]["samsr_category_id"], task["data"]["samsr_image_key"]
    labels_uri = f"{out}/labels/{key}.png"
    before = read_label_map(read_bytes(labels_uri), key)
    refined = decode_rle(task["predictions"][1]["result"][0]["value"]["rle"], 96, 128)
    assert np.array_equal(refined, before.values == cls)
    # the reviewer moves the class 4 px down: pixels come in, pixels go out
    fix = np.roll(refined, 4, axis=0)
    assert "1 corrected, 0 failed" in _import(out, tmp_path / "e.json", [(task, fix)], capsys)
    after = read_label_map(read_bytes(labels_uri), key)
    assert (after.mode, after.palette) == (before.mode, before.palette)
    assert after.transparency == before.transparency
    assert np.array_equal(after.values == cls, fix)
    base = upsample_labels(read_label_map(read_bytes(f"{job['uri']}/{key}_seg.png"), key).values, 96, 128)
    removed = refined & ~fix
    assert removed.sum() > 20
    want = np.where(base == cls, 255, base)  # the input's label; ignore where that was the class
    assert np.array_equal(after.values[removed], want[removed])
    untouched = ~refined & ~fix
    assert np.array_equal(after.values[untouched], before.values[untouched])
    im = Image.open(io.BytesIO(read_bytes(labels_uri)))
    assert im.mode == "P"


def test_image_urls():
    assert image_url("s3://b/x/y.jpg") == "s3://b/x/y.jpg"
    assert image_url("s3://b/y.jpg", presign=lambda u: "https://signed/" + u[5:]) == "https://signed/b/y.jpg"
    assert image_url("https://h/a.jpg") == "https://h/a.jpg"
    assert image_url("/data/sets/a b.jpg") == "/data/local-files/?d=data/sets/a%20b.jpg"
    assert image_url("file:///data/sets/a.jpg", local_root="/data") == "/data/local-files/?d=sets/a.jpg"
    for bad, why in (("/x/shard-0.tar#k.jpg", "tar shard"), ("/other/a.jpg", "outside"),
                     ("memory://a.jpg", "memory://"), ("rel/a.jpg", "relative")):
        with pytest.raises(ValueError, match=why):
            image_url(bad, local_root="/data" if why == "outside" else "/")


def test_export_names_objects_it_cannot_send(refine_job, tmp_path, capsys):
    rows = read_manifest(refine_job).to_pylist()
    row = dict(rows[0], key="tarred", image_uri="/x/shard-0.tar#tarred.jpg", trust_score=0.01, attempt=1)
    write_manifest_part([row], refine_job, "tar")
    tasks = _export(refine_job, str(tmp_path / "t"), "--worst", "2")
    assert [t["data"]["samsr_key"] for t in tasks] == ["img1"]
    assert "left out tarred: ValueError: image '/x/shard-0.tar#tarred.jpg' is a member of a tar shard" in \
        capsys.readouterr().err
