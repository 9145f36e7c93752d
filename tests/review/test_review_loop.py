"""samsr review export / import without a server: tasks of a relabel COCO job, corrections and
bad exports applied to its outputs, the manifest's human rows and the latest rule."""

from __future__ import annotations

import copy
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from jobs import cli
from pipeline.io import latest_rows, read_bytes, read_manifest, write_manifest_part
from pipeline.query import query
from pipeline.review.brush_rle import decode_mask, encode_mask
from pipeline.review.outputs import JobOutputs
from tests.review.outputs import JOB, make_coco_job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return make_coco_job(str(tmp_path_factory.mktemp("review")))


@pytest.fixture
def fresh(job, tmp_path):
    """A copy of the job's output to change."""
    import shutil

    out = str(tmp_path / "out")
    shutil.copytree(job["out"], out)
    record = json.loads(read_bytes(f"{out}/relabel.json"))
    record["output"] = f"{out}/coarse.json"
    (tmp_path / "out" / "relabel.json").write_text(json.dumps(record))
    return {**job, "out": out, "output": record["output"]}


def _export(out, dest, *args):
    assert cli.main(["review", "export", out, "--to", "label-studio", "--dest", dest, *args]) == 0
    return json.loads(open(f"{dest}/tasks.json").read())


def _annotate(task, mask, *, task_id=1, who=7, **over):
    h, w = mask.shape
    result = {"id": "r1", "from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": w,
              "original_height": h,
              "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": ["object"]}}
    result.update(over)
    return {"id": task_id, "data": task["data"], "project": 3,
            "annotations": [{"id": 10 + task_id, "completed_by": who, "was_cancelled": False,
                             "result": [result], "created_at": "2026-12-07T00:30:00.000000Z",
                             "updated_at": "2026-12-07T00:31:00Z"}]}


def test_export_tasks_carry_both_masks_keys_and_a_servable_url(job, tmp_path):
    dest = str(tmp_path / "tasks")
    tasks = _export(job["out"], dest, "--worst", "2")
    assert len(tasks) == 2
    # ranked by change (no trust score, no ground truth): the two lowest change_iou, lowest first
    _, rows = query(job["out"], "SELECT key FROM latest WHERE status = 'ok' AND change_iou IS NOT NULL "
                    "ORDER BY change_iou, key LIMIT 2")
    assert [t["data"]["samsr_key"] for t in tasks] == [r[0] for r in rows]
    latest = {r["key"]: r for r in latest_rows(read_manifest(job["out"])).to_pylist()}
    outputs = JobOutputs(job["out"])
    for t in tasks:
        d = t["data"]
        row = latest[d["samsr_key"]]
        assert d["samsr_job"] == JOB and d["samsr_annotation_id"] == row["annotation_id"]
        assert d["image"] == "/data/local-files/?d=" + row["image_uri"].lstrip("/").replace(" ", "%20")
        coarse, refined = outputs.masks(row)
        assert [p["model_version"] for p in t["predictions"]] == ["coarse", "refined"]
        for p, want in zip(t["predictions"], (coarse, refined)):
            (res,) = p["result"]
            assert (res["type"], res["from_name"], res["to_name"]) == ("brushlabels", "mask", "image")
            got = decode_mask(res["value"]["rle"], res["original_height"], res["original_width"])
            assert np.array_equal(got, want) and want.sum() > 50
        assert not np.array_equal(coarse, refined)
        # the coarse mask is the input annotation at full size, as pycocotools draws it
        ann = next(a for a in job["doc"]["annotations"] if a["id"] == row["annotation_id"])
        assert abs(int(coarse.sum()) - 16 * ann["area"]) < 0.25 * 16 * ann["area"]
    assert '<BrushLabels name="mask" toName="image">' in open(f"{dest}/config.xml").read()
    assert len(_export(job["out"], str(tmp_path / "s"), "--sample", "2", "--seed", "4")) == 2
    where = _export(job["out"], str(tmp_path / "w"), "--where", "category_id = 2")
    assert {t["data"]["samsr_category_id"] for t in where} == {2}


def test_import_applies_good_tasks_and_names_bad_ones(fresh, tmp_path, capsys):
    out = fresh["out"]
    tasks = _export(out, str(tmp_path / "t"), "--where", "row_kind = 'instance'")
    assert len(tasks) == 3
    before = json.loads(read_bytes(fresh["output"]))
    h, w = 96, 128
    good = np.zeros((h, w), bool)
    good[10:40, 20:70] = True
    foreign = copy.deepcopy(tasks[1])
    foreign["data"]["samsr_job"] = "another-job"
    unknown = copy.deepcopy(tasks[2])
    unknown["data"]["samsr_key"] = "nope.jpg#ann1"
    export = [
        _annotate(tasks[0], good, task_id=1),
        _annotate(foreign, good, task_id=2),
        _annotate(unknown, good, task_id=3),
        _annotate(tasks[1], np.ones((h, w + 1), bool), task_id=4),  # a mask of another size
        _annotate(tasks[2], np.zeros((h, w), bool), task_id=5),  # empty
        _annotate(tasks[2], good, task_id=6, type="polygonlabels"),
        {"id": 7, "data": {"image": "x.jpg"}, "annotations": []},  # not a samsr task
        {"id": 8, "data": tasks[2]["data"], "annotations": []},  # not reviewed yet
        _annotate(tasks[0], ~good, task_id=9),  # the same key, annotated earlier: task 1 wins
    ]
    export[-1]["annotations"][0]["updated_at"] = "2026-12-07T00:20:00Z"
    src = tmp_path / "export.json"
    src.write_text(json.dumps(export))
    assert cli.main(["review", "import", out, "--from", "label-studio", str(src)]) == 1
    io = capsys.readouterr()
    for tid, kind in ((2, "other_project"), (3, "unknown_key"), (4, "wrong_size"), (5, "empty_mask"),
                      (6, "bad_result"), (7, "other_project"), (9, "superseded")):
        assert f"task {tid} " in io.err and kind in io.err.split(f"task {tid} ")[1].split("\n")[0]
    assert "1 corrected, 7 failed, 1 not reviewed" in io.out
    after = json.loads(read_bytes(fresh["output"]))
    key = tasks[0]["data"]["samsr_key"]
    aid = tasks[0]["data"]["samsr_annotation_id"]
    for a, b in zip(before["annotations"], after["annotations"]):
        if a["id"] == aid:
            assert mask_utils.decode(b["segmentation"]).astype(bool).tolist() == good.tolist()
            assert b["area"] == good.sum() and b["bbox"] == [20.0, 10.0, 50.0, 30.0]
            assert {k: v for k, v in a.items() if k not in ("segmentation", "area", "bbox")} == \
                {k: v for k, v in b.items() if k not in ("segmentation", "area", "bbox")}
        else:
            assert a == b
    assert {k: v for k, v in before.items() if k != "annotations"} == {k: v for k, v in after.items()
                                                                      if k != "annotations"}
    # the part too, and the pipeline's versions are kept
    assert json.loads(read_bytes(f"{out}/review/machine/coarse.json")) == before
    part = [p for p in (tmp_path / "out" / "coco_parts").iterdir()][0]
    assert json.loads(part.read_text())["annotations"] == [a for a in after["annotations"]
                                                            if a["image_id"] == after["images"][0]["id"]]
    # manifest: one human row for the corrected key, the latest row of its key
    table = read_manifest(out)
    human = [r for r in table.to_pylist() if r["source"] == "human"]
    assert len(human) == 1 and human[0]["key"] == key and human[0]["reviewer"] == "label-studio user 7"
    assert human[0]["reviewed_at"] == dt.datetime(2026, 12, 7, 0, 31, tzinfo=dt.timezone.utc)
    assert human[0]["attempt"] == 2 and human[0]["annotation_id"] == aid
    _, rows = query(out, f"SELECT source FROM latest WHERE key = '{key}'")
    assert rows == [("human",)]


def test_human_row_stays_latest_and_old_manifests_read(tmp_path):
    out = str(tmp_path)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    # an old part, written before source / reviewer existed
    old = pa.table({"job_id": ["j", "j"], "key": ["a", "b"], "status": ["ok", "ok"],
                    "finished_at": pa.array([t, t], pa.timestamp("ms", tz="UTC"))})
    (tmp_path / "manifest").mkdir()
    pq.write_table(old, tmp_path / "manifest" / "part-old.parquet")
    assert query(out, "SELECT count(*), count(source) FROM latest")[1] == [(2, 0)]
    write_manifest_part([{"job_id": "j", "key": "a", "status": "ok", "source": "human", "reviewer": "ann",
                          "finished_at": t + dt.timedelta(minutes=1)}], out, "review-1")
    # the pipeline writes "a" again later (a forced rerun): the reviewer's row still wins
    later = {"job_id": "j", "key": "a", "status": "ok", "finished_at": t + dt.timedelta(minutes=5)}
    write_manifest_part([later], out, "later")
    assert query(out, "SELECT key, source, reviewer FROM latest ORDER BY key")[1] == [("a", "human", "ann"),
                                                                                     ("b", None, None)]
    rows = latest_rows(read_manifest(out)).to_pylist()
    assert [(r["key"], r["source"]) for r in rows] == [("a", "human"), ("b", None)]
