"""The refine pipeline on a real local Ray (2 CPUs) with real models (tiny, random weights).

One Ray for the whole module. Covers: WebDataset shards on a real S3 endpoint (moto) -> masks
+ manifest on S3 -> ``samsr query``; exactness against calling the refiner directly; resume;
corrupt inputs of every kind; a worker killed mid-job; the CLI in-process.
"""

from __future__ import annotations

import json
import os
import signal

import cv2
import numpy as np
import psutil
import pytest

from jobs import query as query_job
from pipeline.config import config_from_dict
from pipeline.io import (
    completed_keys,
    list_samples,
    load_sample,
    mask_uri,
    read_bytes,
    read_manifest,
    safe_key,
    to_binary_u8,
    to_soft_u8,
)
from pipeline.metrics import image_metrics
from pipeline.runner.refine import format_run, run_refine
from tests.helpers import (
    bomb_png,
    encode_image,
    encode_mask,
    jpeg_with_orientation,
    make_sample,
    make_samples,
    put,
    write_layout,
    write_prefix_layout,
)

USES_S3 = True
pytestmark = pytest.mark.usefixtures("local_ray")


def _cfg(uri: str, out: str, checkpoint: str, layout: str = "prefix", **sections) -> object:
    data = {
        "input": {"uri": uri, "layout": layout},
        "output": {"prefix": out},
        "model": {"name": "crm_mnv2", "checkpoint": checkpoint},
        "ray": {"progress": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return config_from_dict(data)


def _read_png(uri: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(read_bytes(uri), np.uint8), cv2.IMREAD_UNCHANGED)


def _direct_refine(checkpoint: str, sample, decode: str = "full"):
    """What the pipeline must produce for one sample: the refiner called directly."""
    from pipeline.models import build_model
    from pipeline.refine import RefineOptions, prepare_model, refine

    options = RefineOptions(decode=decode)
    model = prepare_model(build_model("crm_mnv2", checkpoint), options)
    return refine(model, np.array(sample.image), np.array(sample.coarse), options=options)


def test_webdataset_on_s3_end_to_end_and_query(s3_bucket, crm_checkpoint, capsys):
    samples = make_samples(5, 40, 56)
    uri = write_layout("webdataset", s3_bucket + "/in", samples, per_shard=2)  # 3 shards
    out = s3_bucket + "/runs/wds"
    cfg = _cfg(uri, out, crm_checkpoint, "webdataset", output={"soft": True}, refine={"decode": "bbox"})
    result = run_refine(cfg)
    assert (result.listed, result.processed, result.ok, result.error) == (5, 5, 5, 0)
    assert result.duplicates_dropped == 0

    table = read_manifest(out)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == [s["key"] for s in samples] and table.num_rows == 5
    refs = {r.key: r for r in list_samples(uri, "webdataset")}
    for s in samples:
        row = rows[s["key"]]
        assert row["status"] == "ok" and row["attempt"] == 1 and row["job_id"] == cfg.job_id
        assert row["image_uri"].startswith(s3_bucket + "/in/shards/shard-") and "#" in row["image_uri"]
        assert row["output_uri"] == mask_uri(out, s["key"]) and row["soft_output_uri"] == mask_uri(
            out, s["key"], "soft"
        )
        assert (row["width"], row["height"], row["method"], row["decode_mode"]) == (56, 40, "crm", "bbox")
        # the written masks are exactly what the refiner gives for this sample
        sample = load_sample(refs[s["key"]])
        prob = _direct_refine(crm_checkpoint, sample, decode="bbox")
        np.testing.assert_array_equal(_read_png(row["soft_output_uri"]), to_soft_u8(prob))
        refined = _read_png(row["output_uri"])
        np.testing.assert_array_equal(refined, to_binary_u8(prob))
        # and the manifest's metrics are those of the written mask against the gt
        m = image_metrics(refined, s["gt"])
        assert (row["intersection_refined"], row["union_refined"]) == (m["intersection"], m["union"])
        mc = image_metrics(sample.coarse, s["gt"])
        assert row["iou_coarse"] == pytest.approx(mc["iou"]) and row["mba_coarse"] == pytest.approx(mc["mba"])

    # samsr query reads the S3 manifest back through DuckDB + the registered fsspec filesystem
    assert query_job.main([out, "SELECT key, status FROM manifest ORDER BY key", "--format", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [{"key": s["key"], "status": "ok"} for s in samples]
    assert query_job.main([out, "--summary", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    inter = sum(r["intersection_coarse"] for r in rows.values())
    union = sum(r["union_coarse"] for r in rows.values())
    assert summary["samples"] == 5 and summary["ok"] == 5
    assert summary["iou_coarse_pct"] == pytest.approx(round(100 * inter / union, 2))
    assert result.summary["coarse"]["dataset_iou"] == pytest.approx(inter / union)
    assert "coarse" in format_run(result) and "samples listed" in format_run(result)


def _corrupt_inputs(root: str) -> tuple[str, dict[str, str | None]]:
    """A prefix-layout folder with one sample per kind of bad (or odd but fine) input.

    Returns (uri, {key: expected error_type or None for ok}).
    """
    base = make_sample("x", 40, 60, seed=3)
    png = encode_image(base["image"], "png")
    grey = cv2.cvtColor(base["image"], cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([base["image"], np.full((40, 60), 200, np.uint8)])
    cases = {
        "truncated_image": ({"image_bytes": png[:200]}, "decode_error"),
        "text_image": ({"image_bytes": b"this is not an image"}, "decode_error"),
        "text_mask": ({"mask_bytes": b"not a png"}, "decode_error"),
        "bomb_image": ({"image_bytes": bomb_png(12000, 9000)}, "too_large"),
        "bomb_mask": ({"mask_bytes": bomb_png(12000, 9000)}, "too_large"),
        "wrong_aspect": ({"coarse": np.zeros((40, 40), np.uint8)}, "aspect_mismatch"),
        "small_gt": ({"gt": np.zeros((20, 30), np.uint8)}, "gt_size_mismatch"),
        "no_mask": ({"mask": False}, "missing_mask"),
        "no_image": ({"image": False}, "missing_image"),
        # unusual but supported inputs: these must succeed
        "grey_image": ({"image_bytes": encode_mask(grey)}, None),
        "rgba_image": ({"image_bytes": encode_mask(rgba)}, None),
        "mask16": ({"mask_bytes": encode_mask(base["coarse"].astype(np.uint16) * 257)}, None),
        "low_res_mask": ({"coarse": cv2.resize(base["coarse"], (15, 10))}, None),
        "odd key é+&": ({}, None),
        "fine": ({}, None),
    }
    samples = []
    for key, (override, _) in cases.items():
        s = dict(base, key=key)
        s.update(override)
        samples.append(s)
    uri = write_prefix_layout(root, samples, image_ext="png")
    # EXIF-rotated JPEG whose mask and gt are at the upright size
    rot = make_sample("exif_rotated", 40, 60, seed=4)
    put(f"{root}/exif_rotated_im.jpg", jpeg_with_orientation(np.ascontiguousarray(np.rot90(rot["image"])), 8))
    put(f"{root}/exif_rotated_seg.png", encode_mask(rot["coarse"]))
    put(f"{root}/exif_rotated_gt.png", encode_mask(rot["gt"]))
    # two images for one key
    put(f"{root}/twice_im.jpg", encode_image(base["image"]))
    put(f"{root}/twice_im.png", png)
    put(f"{root}/twice_seg.png", encode_mask(base["coarse"]))
    expected = {k: v[1] for k, v in cases.items()}
    expected.update(exif_rotated=None, twice="duplicate_key")
    return uri, expected


def test_corrupt_samples_become_error_rows_and_the_rest_is_processed(tmp_path, crm_checkpoint):
    uri, expected = _corrupt_inputs(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    # batches of 4 mix ok and failed samples (arrays of different shapes, zero-size placeholders)
    result = run_refine(
        _cfg(uri, out, crm_checkpoint, input={"max_pixels": 50_000_000}, ray={"batch_size": 4})
    )
    rows = {r["key"]: r for r in read_manifest(out).to_pylist()}
    assert sorted(rows) == sorted(expected)
    for key, error_type in expected.items():
        row = rows[key]
        if error_type is None:
            assert row["status"] == "ok", (key, row["error_type"], row["error_message"])
            assert _read_png(row["output_uri"]).shape == (row["height"], row["width"])
        else:
            assert (row["status"], row["error_type"]) == ("error", error_type), (key, row["error_message"])
            assert row["error_message"] and row["output_uri"] is None
    assert rows["exif_rotated"]["width"] == 60 and rows["exif_rotated"]["height"] == 40
    assert (rows["low_res_mask"]["coarse_width"], rows["low_res_mask"]["coarse_height"]) == (15, 10)
    assert rows["odd key é+&"]["output_uri"].endswith("/masks/" + safe_key("odd key é+&") + ".png")
    n_err = sum(v is not None for v in expected.values())
    assert (result.ok, result.error) == (len(expected) - n_err, n_err)
    assert result.summary["error_types"]["decode_error"] == 3


def test_resume_skips_ok_rows_and_retries_errors_as_new_attempts(tmp_path, crm_checkpoint):
    samples = make_samples(4, 32, 48)
    bad = dict(make_sample("s_bad", 32, 48, seed=9))
    good_bad = dict(bad)
    bad["image_bytes"] = b"\xff\xd8\xff truncated jpeg"
    root = str(tmp_path / "in")
    write_prefix_layout(root, [*samples, bad])
    out = str(tmp_path / "out")
    cfg = _cfg(root, out, crm_checkpoint, ray={"manifest_rows_per_part": 2})
    first = run_refine(cfg)
    assert (first.ok, first.error) == (4, 1) and len(first.parts) == 3
    masks = {s["key"]: os.stat(tmp_path / "out" / "masks" / f"{s['key']}.png").st_mtime_ns for s in samples}

    write_prefix_layout(root, [good_bad])  # the broken input is repaired
    second = run_refine(cfg)
    assert (second.already_done, second.processed, second.ok) == (4, 1, 1)
    assert second.run_id != first.run_id
    table = read_manifest(out).to_pylist()
    bad_rows = sorted((r["attempt"], r["status"], r["run_id"]) for r in table if r["key"] == "s_bad")
    assert bad_rows == [(1, "error", first.run_id), (2, "ok", second.run_id)]
    assert completed_keys(out) == {s["key"] for s in samples} | {"s_bad"}
    for s in samples:  # finished masks were not rewritten
        assert os.stat(tmp_path / "out" / "masks" / f"{s['key']}.png").st_mtime_ns == masks[s["key"]]
    assert second.summary["samples"] == 5 and second.summary["ok"] == 5 and second.summary["error"] == 0

    third = run_refine(cfg)
    assert (third.processed, third.already_done, third.parts) == (0, 5, [])
    assert len(read_manifest(out)) == 6


def _refiner_worker_pids() -> list[int]:
    """PIDs of this test's refiner actors (descendants of this process: the local Ray it started)."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RefinerWorker" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


def test_worker_killed_mid_job_every_sample_exactly_once(tmp_path, crm_checkpoint):
    samples = make_samples(12, 48, 64)
    uri = write_layout("prefix", str(tmp_path), samples)
    out = str(tmp_path / "out")
    killed: list[int] = []

    def kill_once(row: dict) -> None:
        if killed:
            return
        pids = _refiner_worker_pids()
        assert pids, "no refiner actor process found"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    result = run_refine(_cfg(uri, out, crm_checkpoint), on_row=kill_once)
    assert len(killed) == 1
    table = read_manifest(out).to_pylist()
    ok_keys = [r["key"] for r in table if r["status"] == "ok"]
    assert sorted(ok_keys) == [s["key"] for s in samples]  # every sample exactly once
    assert result.ok == 12 and result.error == 0
    for s in samples:
        assert _read_png(mask_uri(out, s["key"])).shape == (48, 64)


def test_refine_cli_in_process_prints_summary(tmp_path, crm_checkpoint, capsys):
    from jobs.cli import main

    root = write_layout("prefix", str(tmp_path), make_samples(2, 32, 40))
    config = tmp_path / "job.yaml"
    config.write_text(f"input: {{uri: {root}}}\nmodel: {{name: crm_mnv2, checkpoint: {crm_checkpoint}}}\n")
    out = str(tmp_path / "out")
    code = main(["refine", "--config", str(config), "--output", out, "--set", "ray.batch_size=2", "--report"])
    assert code == 0
    captured = capsys.readouterr()
    assert "processed this run      2 (ok 2, failed 0)" in captured.out and "IoU %" in captured.out
    assert f"report: {out}/report/index.html" in captured.out
    assert "2: ok 2, error 0" in (tmp_path / "out" / "report" / "index.html").read_text()
    assert "2/2" in captured.err and "img/s" in captured.err and "failed=0" in captured.err  # progress bar
    assert main(["evaluate", out]) == 0
    assert "refined" in capsys.readouterr().out


def test_do_no_harm_keeps_the_coarse_mask_and_the_refined_candidate(tmp_path, crm_checkpoint):
    """refine.accept: score with a threshold no output reaches: every mask written is the coarse
    one, the refined one lands in candidates/ (equal to the refiner called directly), and the
    manifest says so; with accept none every output is refined and still scored."""
    root = write_layout("prefix", str(tmp_path / "in"), make_samples(2, 32, 40))
    strict = str(tmp_path / "strict")
    run_refine(_cfg(root, strict, crm_checkpoint, refine={"accept": "score", "min_score": 1.0}))
    refs = {r.key: r for r in list_samples(root, "prefix")}
    rows = read_manifest(strict).to_pylist()
    assert len(rows) == 2
    for row in rows:
        sample = load_sample(refs[row["key"]])
        assert row["status"] == "ok" and row["accepted"] is False and 0 < row["trust_score"] < 1
        assert np.array_equal(_read_png(row["output_uri"]), to_binary_u8(np.array(sample.coarse)))
        assert row["candidate_uri"].endswith("/candidates/" + safe_key(row["key"]) + ".png")
        expected = to_binary_u8(_direct_refine(crm_checkpoint, sample))
        assert np.array_equal(_read_png(row["candidate_uri"]), expected)
        assert row["iou_refined"] == row["iou_coarse"] and row["changed_fraction"] == 0
    loose = str(tmp_path / "loose")
    run_refine(_cfg(root, loose, crm_checkpoint))
    for row in read_manifest(loose).to_pylist():
        assert row["accepted"] is True and 0 < row["trust_score"] < 1 and row["candidate_uri"] is None
        assert row["line_level"] == 0.5


@pytest.mark.parametrize("proposals", ["sam", "regions"])
@pytest.mark.parametrize("method", ["samsr-v1", "samsr-v2.1"])
def test_samsr_methods_end_to_end(
    method, proposals, tmp_path, crm_checkpoint, v21_checkpoint, sam_checkpoint
):
    """Both methods with both proposal sources (a tiny random SAM; ``regions``, no weights):
    every row equals the computation done by hand."""
    import torch

    from pipeline.models import build_model
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.sam import FastMaskGenerator, build_sam, merge_v1, propose
    from pipeline.sam.regions import RegionGenerator, RegionSettings

    samples = make_samples(2, 48, 64)
    uri = write_layout("prefix", str(tmp_path), samples)
    out = str(tmp_path / "out")
    model = {"name": "samsr_v21_mnv2" if method == "samsr-v2.1" else "crm_mnv2"}
    model["checkpoint"] = v21_checkpoint if method == "samsr-v2.1" else crm_checkpoint
    gen = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    sam = {"model_type": "tiny", "checkpoint": sam_checkpoint, "working_size": 128, "seed": 7, **gen}
    regions = {"segment_size": 32, "scale": 50.0, "min_area": 0.01}
    if proposals == "regions":
        sam = {"proposals": "regions", "working_size": 128, "seed": 7}
    cfg = _cfg(
        uri,
        out,
        "",
        method=method,
        model=model,
        sam=sam,
        regions=regions,
        output={"soft": True},
        v1={"deform_iou_thresh": 0.0, "sparsity_thresh": 0.0, "cover_thresh": 0.5},
    )
    from pipeline.config.preflight import check_runtime

    check_runtime(cfg)
    result = run_refine(cfg)
    assert (result.ok, result.error) == (2, 0)
    rows = {r["key"]: r for r in read_manifest(out).to_pylist()}
    settings = RegionSettings(**regions)
    source = ("tiny", None) if proposals == "sam" else (settings.describe(), settings.digest())
    for r in rows.values():
        assert r["method"] == method and r["sam_model"] == source[0] and r["sam_hash"]
        assert proposals == "sam" or r["sam_hash"] == source[1]

    # the same computation by hand, single-threaded like the actors
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if proposals == "sam":
            generator = FastMaskGenerator(build_sam("tiny", sam_checkpoint), points_per_batch=64, **gen)
        else:
            generator = RegionGenerator(settings)
        options = RefineOptions()
        refiner = prepare_model(build_model(model["name"], model["checkpoint"]), options)
        for ref in list_samples(uri):
            s = load_sample(ref)
            image, coarse = np.array(s.image), np.array(s.coarse)
            props = propose(generator, image, s.key, working_size=128, seed=7)
            row = rows[s.key]
            assert row["sam_mask_count"] == len(props.masks) > 0
            if method == "samsr-v2.1":
                assert row["sam_gate"] is None
                prob = refine(refiner, image, coarse, np.array(props.colour_map), options=options)
            else:
                merged, gate = merge_v1(
                    coarse, props.masks, cover_thresh=0.5, sparsity_thresh=0.0, deform_iou_thresh=0.0
                )
                assert row["sam_gate"] == gate
                prob = refine(refiner, image, merged, options=options)
            np.testing.assert_array_equal(_read_png(row["soft_output_uri"]), to_soft_u8(prob))
    finally:
        torch.set_num_threads(threads)


def test_demo_config_runs_on_the_bundled_samples(tmp_path, monkeypatch, capsys):
    """The README's main command (limited to one sample, output in a tmp dir)."""
    from pathlib import Path

    from jobs.cli import main

    root = Path(__file__).resolve().parents[2]
    if not (root / "pipeline" / "weights" / "crm_mnv2.pt").exists():
        pytest.skip("pipeline/weights/crm_mnv2.pt is not shipped yet")
    monkeypatch.chdir(root)
    out = str(tmp_path / "demo")
    assert (
        main(["refine", "--config", "configs/demo.yaml", "--output", out, "--limit", "1", "--no-progress"])
        == 0
    )
    text = capsys.readouterr().out
    assert "processed this run      1 (ok 1, failed 0)" in text
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["iou_refined"] is not None and row["model_name"] == "samsr_v21_mnv2"
    assert row["method"] == "samsr-v2.1" and row["sam_model"] == "regions:felzenszwalb"
    assert row["sam_mask_count"] > 10
    # the demo's do-no-harm policy: a score, and the decision it implies
    from pipeline.refine.trust import load_trust_model

    assert 0 < row["trust_score"] < 1
    share = row["accepted_share"]  # accept: regions: the share of the changed pixels kept
    assert 0 <= share <= 1
    if row["trust_score"] >= load_trust_model("shipped").min_score:
        assert row["accepted"] and share == 1.0  # trusted whole
    assert row["accepted"] == (share == 1.0)
    assert (row["candidate_uri"] is None) == row["accepted"]  # the refined mask, when anything was undone


def test_starved_cluster_fails_by_the_watchdog_not_a_hang(tmp_path, crm_checkpoint):
    """Another tenant holds 1.5 of the 2 CPUs: the 1-CPU refiner actor can never start. The job
    must fail within its stall timeout, naming what waits and what is missing."""
    import time

    import ray

    from pipeline.runner.progress import JobStalledError

    @ray.remote(num_cpus=1.5)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    try:
        samples = make_samples(3, 48, 64)
        uri = write_layout("prefix", str(tmp_path), samples)
        out = str(tmp_path / "out")
        t = time.monotonic()
        with pytest.raises(JobStalledError) as err:
            run_refine(_cfg(uri, out, crm_checkpoint,
                            ray={"progress": False, "stall_timeout_s": 8, "actor_start_timeout_s": 5}))
        wall = time.monotonic() - t
    finally:
        ray.kill(hog)
    msg = str(err.value)
    assert "model actors did not start within ray.actor_start_timeout_s = 5 s" in msg
    assert "0 of 3 done" in msg and "model actors (each needs 1 CPU, 0.5 free)" in msg
    assert wall < 5 + 120, "failed near its start timeout"
    assert read_manifest(out).num_rows == 0


def test_a_refiner_actor_reports_its_progress_to_the_jobs_beacon(tmp_path, crm_checkpoint):
    """The wiring the watchdog relies on for a long sample: the job's beacon (made as
    ``run_on_ray`` makes it) hears from a refiner actor (made with the job's constructor
    arguments) while it refines, and not before."""
    import time

    import ray

    from pipeline.io import list_samples
    from pipeline.runner.job import _start_beacon, _stop_beacon
    from pipeline.runner.workers import RefinerWorker, refiner_kwargs
    from pipeline.stages import decode_batch, make_batch

    uri = write_layout("prefix", str(tmp_path), make_samples(1, 240, 320))
    cfg = _cfg(uri, str(tmp_path / "out"), crm_checkpoint, ray={"progress": False, "stall_timeout_s": 0.8})
    (ref,) = list_samples(cfg.input.uri, cfg.input.layout)
    batch = decode_batch(make_batch([{"meta": {"key": ref.key, "ref": ref.to_dict(), "attempt": 1}}], ()),
                         max_pixels=cfg.input.max_pixels, load_gt=False)
    beacon = _start_beacon()
    try:
        kwargs = refiner_kwargs(cfg, 1, beacon)
        assert kwargs["beat_s"] == pytest.approx(0.2)
        worker = ray.remote(num_cpus=1)(RefinerWorker).remote(**kwargs)
        time.sleep(1.0)  # the actor is up and idle: nothing to report
        assert ray.get(beacon.idle_s.remote()) is None
        out = ray.get(worker.__call__.remote(batch))
        assert json.loads(out["meta"][0]).get("status") != "error" and out["refined"][0].shape == (240, 320)
        deadline = time.monotonic() + 30
        while ray.get(beacon.idle_s.remote()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.get(beacon.idle_s.remote()) is not None
        ray.kill(worker)
    finally:
        _stop_beacon(beacon)
