"""``samsr query`` / ``samsr evaluate`` over manifests written with pipeline.io (no Ray needed)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from jobs import evaluate as evaluate_job
from jobs import query as query_job
from pipeline.io import write_manifest_part

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _row(key: str, status: str = "ok", minute: int = 0, **kw) -> dict:
    row = {
        "job_id": "j",
        "run_id": f"r{minute}",
        "key": key,
        "status": status,
        "method": "crm",
        "finished_at": T0 + dt.timedelta(minutes=minute),
    }
    if status == "error":
        row.update(error_type=kw.pop("error_type", "decode_error"), error_message=f"bad {key}")
    row.update(kw)
    return row


def _metrics(ic, uc, ir, ur, mc, mr) -> dict:
    return dict(
        intersection_coarse=ic,
        union_coarse=uc,
        intersection_refined=ir,
        union_refined=ur,
        iou_coarse=ic / uc,
        iou_refined=ir / ur,
        mba_coarse=mc,
        mba_refined=mr,
        t_total_ms=10.0,
    )


@pytest.fixture
def manifest(storage_root):
    """Two runs: b failed then succeeded; c failed twice (two types); d is ok without mBA."""
    out = storage_root + "/job"
    write_manifest_part(
        [
            _row("a", **_metrics(80, 100, 90, 100, 0.6, 0.8)),
            _row("b", "error", error_type="decode_error"),
            _row("c", "error", error_type="too_large"),
        ],
        out,
        "r0-00000",
    )
    write_manifest_part(
        [
            _row("b", minute=5, attempt=2, **_metrics(10, 40, 30, 40, 0.5, 0.7)),
            _row("c", "error", minute=5, attempt=2, error_type="decode_error"),
            _row(
                "d", minute=5, **{**_metrics(0, 10, 5, 10, 0.1, 0.2), "mba_coarse": None, "mba_refined": None}
            ),
        ],
        out,
        "r5-00000",
    )
    return out


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_sql_summary_worst_and_failures(manifest, capsys):
    assert query_job.main([manifest, "SELECT count(*) AS n FROM manifest", "--format", "json"]) == 0
    assert _json_lines(capsys.readouterr().out) == [{"n": 6}]
    assert (
        query_job.main([manifest, "SELECT key, status, attempt FROM latest ORDER BY key", "--format", "json"])
        == 0
    )
    latest = _json_lines(capsys.readouterr().out)
    assert [(r["key"], r["status"]) for r in latest] == [
        ("a", "ok"),
        ("b", "ok"),
        ("c", "error"),
        ("d", "ok"),
    ]
    assert latest[2]["attempt"] == 2  # the newest of c's two failures

    assert query_job.main([manifest, "--summary", "--format", "json"]) == 0
    (s,) = _json_lines(capsys.readouterr().out)
    assert (s["samples"], s["ok"], s["failed"], s["with_gt"]) == (4, 3, 1, 3)
    assert s["iou_coarse_pct"] == pytest.approx(round(100 * 90 / 150, 2))  # total I / total U
    assert s["iou_refined_pct"] == pytest.approx(round(100 * 125 / 150, 2))
    assert s["mba_refined_pct"] == pytest.approx(75.0)  # mean over images with mBA (a, b)

    assert query_job.main([manifest, "--worst", "1", "--format", "json"]) == 0
    assert [r["key"] for r in _json_lines(capsys.readouterr().out)] == ["b"]
    assert query_job.main([manifest, "--worst", "5", "--by", "iou", "--format", "json"]) == 0
    assert [r["key"] for r in _json_lines(capsys.readouterr().out)] == ["d", "b", "a"]

    # without ground truth the least trusted come first (--by auto picks trust, or asked by name)
    no_gt = manifest + "_nogt"
    write_manifest_part([_row(k, trust_score=s, accepted=s >= 0.5, t_total_ms=1.0)
                         for k, s in (("x", 0.9), ("y", 0.2), ("z", 0.6))], no_gt, "r0-00000")
    for by in ([], ["--by", "trust"]):
        assert query_job.main([no_gt, "--worst", "2", *by, "--format", "json"]) == 0
        worst = _json_lines(capsys.readouterr().out)
        assert [(r["key"], r["trust_score"], r["accepted"]) for r in worst] == [("y", 0.2, False),
                                                                                ("z", 0.6, True)]
    from pipeline.io import read_manifest
    from pipeline.summary import format_quality_table, summarize_manifest

    summary = summarize_manifest(read_manifest(no_gt))
    assert (summary["scored"], summary["accepted"], summary["kept_coarse"]) == (3, 2, 1)
    assert summary["mean_trust_score"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert "trust: 3 images scored (mean score 0.57); refined mask kept for 2, coarse mask kept for 1 (" in \
        format_quality_table(summary)
    # refine.accept: regions: accepted_share says whether some of the refined changes were kept
    part = manifest + "_part"
    write_manifest_part([_row("p", trust_score=0.4, accepted=False, accepted_share=0.3, t_total_ms=1.0),
                         _row("q", trust_score=0.1, accepted=False, accepted_share=0.0, t_total_ms=1.0),
                         _row("r", trust_score=0.95, accepted=True, accepted_share=1.0, t_total_ms=1.0)],
                        part, "r0-00000")
    summary = summarize_manifest(read_manifest(part))
    assert (summary["accepted"], summary["kept_coarse"], summary["kept_part"]) == (1, 1, 1)
    assert ("refined mask kept for 1, coarse mask kept for 1, some changes kept for 1 (the others undone)"
            in format_quality_table(summary))

    assert query_job.main([manifest, "--failures", "--format", "json"]) == 0
    (f,) = _json_lines(capsys.readouterr().out)
    assert (f["error_type"], f["samples"], f["example_key"]) == ("decode_error", 1, "c")
    assert f["example_message"] == "bad c"  # the example key's own message

    assert (
        query_job.main([manifest + "/manifest", "SELECT count(*) AS n FROM latest", "--format", "csv"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == ["n", "4"]
    assert query_job.main([manifest, "--summary"]) == 0
    table = capsys.readouterr().out
    assert "iou_refined_pct" in table and "(1 row)" in table

    # the library's rules give the same answers as the SQL (latest row, dataset IoU, mean mBA)
    from pipeline.io import latest_rows, read_manifest
    from pipeline.summary import summarize_manifest

    rows = read_manifest(manifest)
    py_latest = latest_rows(rows).to_pylist()
    assert [(r["key"], r["status"], r["attempt"]) for r in py_latest] == [
        (r["key"], r["status"], r["attempt"]) for r in latest]
    py = summarize_manifest(rows)
    assert (py["samples"], py["ok"], py["error"], py["with_gt"]) == (s["samples"], s["ok"], s["failed"],
                                                                    s["with_gt"])
    assert round(100 * py["refined"]["dataset_iou"], 2) == pytest.approx(s["iou_refined_pct"])
    assert round(100 * py["coarse"]["dataset_iou"], 2) == pytest.approx(s["iou_coarse_pct"])
    assert round(100 * py["refined"]["mean_mba"], 2) == pytest.approx(s["mba_refined_pct"])


def test_query_errors_and_empty_manifests(tmp_path, capsys):
    empty = str(tmp_path / "nothing")
    assert query_job.main([empty, "SELECT count(*) AS n FROM manifest", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "0"]
    assert query_job.main([empty, "SELECT nope FROM manifest"]) == 1
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        query_job.main([empty])  # neither SQL nor a ready-made query
    with pytest.raises(SystemExit):
        query_job.main([empty, "SELECT 1", "--summary"])


def test_evaluate_prints_the_thesis_table(manifest, capsys):
    s = evaluate_job.run(manifest)
    assert (s["samples"], s["ok"], s["error"], s["with_gt"]) == (4, 3, 1, 3)
    assert s["coarse"]["dataset_iou"] == pytest.approx(90 / 150)
    assert s["refined"]["dataset_iou"] == pytest.approx(125 / 150)
    assert s["refined"]["mean_mba"] == pytest.approx(0.75)
    assert s["error_types"] == {"decode_error": 1}
    assert evaluate_job.main([manifest]) == 0
    out = capsys.readouterr().out
    assert "coarse        60.00" in out and "refined       83.33" in out and "gain" in out
    assert evaluate_job.main([manifest, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 3
    assert evaluate_job.main([manifest, "--job-id", "other"]) == 1


def test_failures_example_key_and_message_come_from_one_row(storage_root, capsys):
    out = storage_root + "/fails"
    write_manifest_part([_row(f"z{i:02d}", "error", error_type="decode_error") for i in range(50)], out,
                        "r0-00000")
    write_manifest_part([_row("a0", "error", minute=1, error_type="decode_error")], out, "r1-00000")
    assert query_job.main([out, "--failures", "--format", "json"]) == 0
    (f,) = _json_lines(capsys.readouterr().out)
    assert (f["samples"], f["example_key"], f["example_message"]) == (51, "a0", "bad a0")
