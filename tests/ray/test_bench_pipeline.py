"""``samsr benchmark pipeline``: the bare loop and the Ray pipeline give the same masks, the
numbers are measured (steady state from mask write times), and the scaling run uses both nodes."""

from __future__ import annotations

import json

import pytest

from jobs.benchmark import main as benchmark_main
from pipeline.bench.pipeline import steady_state


def test_steady_state_skips_startup_and_first_images():
    # one worker: start-up 5 s, then one image per 2 s
    s = steady_state([105.0 + 2 * i for i in range(5)], workers=1, t_start=98.0)
    assert s["per_image_s"] == pytest.approx(2.0) and s["images_per_s"] == pytest.approx(0.5)
    assert s["startup_s"] == pytest.approx(5.0) and s["wall_s"] == pytest.approx(15.0)
    # two workers finishing in pairs every 2 s: 1 s per image; the first pair is warm-up
    s = steady_state([10.0, 10.1, 12.0, 12.1, 14.0, 14.1], workers=2, t_start=0.0)
    assert s["images_per_s"] == pytest.approx(4 / 4.0) and s["per_image_s"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="more than 2 finished images"):
        steady_state([1.0, 2.0], workers=2, t_start=0.0)


def test_benchmark_pipeline_end_to_end(tmp_path, crm_checkpoint, capsys):
    out = tmp_path / "bench.json"
    code = benchmark_main(["pipeline", "--images", "4", "--size", "128x96", "--method", "crm",
                           "--model", "crm_mnv2", "--checkpoint", crm_checkpoint,
                           "--set", "refine.options.scales=[1.0]", "--workdir", str(tmp_path / "work"),
                           "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "masks byte-identical: 4/4" in text
    assert "bare loop over the stage functions" in text and "efficiency" in text
    r = json.loads(out.read_text())
    o = r["overhead"]
    assert o["identical_masks"] == 4 and o["cores"] == 1
    for run in (o["bare"], o["ray"]):
        assert 0 < run["per_image_s"] < run["wall_s"] and run["startup_s"] >= 0
    assert o["overhead"] == pytest.approx(o["ray"]["per_image_s"] / o["bare"]["per_image_s"] - 1)
    s = r["scaling"]
    # the second worker was placed on the other node (with 4 tiny images one may still do them all)
    assert s["one"]["nodes"] == 1 and s["two"]["nodes"] == 2
    assert s["one"]["nodes_used"] == 1 and 1 <= s["two"]["nodes_used"] <= 2
    assert s["efficiency"] == pytest.approx(s["two"]["images_per_s"] / (2 * s["one"]["images_per_s"]))
    # outputs of every run are kept in the workdir, one mask per image each
    for name in ("out-bare", "out-ray", "out-w1", "out-w2"):
        assert len(list((tmp_path / "work" / name / "masks").glob("*.png"))) == 4


def test_benchmark_pipeline_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark_main(["pipeline", "--images", "2"])
    assert e.value.code == 2 and "--images must be at least 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark_main(["pipeline", "--size", "10x10"])
    assert "at least 32x32" in capsys.readouterr().err
