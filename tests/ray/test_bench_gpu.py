"""``samsr benchmark gpu --small`` runs on CPU: refiner fp32 vs bf16, SAM stock vs fast, the pipeline."""

from __future__ import annotations

import json

import pytest

from jobs.benchmark import main as benchmark_main
from pipeline.bench.gpu import GpuSampler


def test_benchmark_gpu_small_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert benchmark_main(["gpu", "--small", "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samsr benchmark gpu on cpu (" in text and "GPU busy n/a" in text
    r = json.loads(out.read_text())
    fp32, bf16 = r["refiner"]
    assert (fp32["config"], bf16["config"]) == ("exact", "exact-bf16")
    assert fp32["status"] == bf16["status"] == "ok" and fp32["wall_s"] > 0 and bf16["peak_bytes"] > 0
    # bf16 is compared with fp32: close, not equal (it really ran in bfloat16)
    assert bf16["agreement"] >= 0.999 and 0 < bf16["max_abs_diff"] < 0.05
    s = r["sam"]
    assert s["identical"] and s["stock_s"] > 0 and s["fast_s"] > 0
    p = r["pipeline"]
    assert p["gpus"] == 0 and p["images"] == 3 and p["images_per_s"] > 0 and p["gpu_busy"] is None
    assert 0 < p["refine_share"] <= 1.5


def test_gpu_sampler_window_mean():
    s = GpuSampler()
    s.samples = [(1.0, 0.2), (2.0, 0.6), (3.0, 1.0)]
    assert s.mean() == pytest.approx(0.6)
    assert s.mean(1.5, 3.0) == pytest.approx(0.8)
    assert s.mean(4.0) is None


def test_benchmark_gpu_rejects_unknown_parts(capsys):
    with pytest.raises(SystemExit):
        benchmark_main(["gpu", "--parts", "refiner,nope"])
    assert "unknown ['nope']" in capsys.readouterr().err


def test_gpu_sampler_reads_the_gpus_this_process_sees(monkeypatch):
    from pipeline.bench.gpu import visible_gpu_ids

    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpu_ids({}) == [] and visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-abc")
    assert "--id=3,GPU-abc" in GpuSampler().cmd
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert not any(a.startswith("--id") for a in GpuSampler().cmd)  # every GPU, not GPU 0 only
    assert "--id=1" in GpuSampler(["1"]).cmd


def test_the_full_runs_pipeline_job_plans_on_one_card():
    """What the full ``samsr benchmark gpu`` asks of a card before any of it runs there: the
    pipeline part's job (default config, crm_r50, refine.device cuda) plans one refiner actor on
    one 80 GiB card (H100) and on a 16 GiB one, and its SAM model is a known size."""
    from pipeline.bench.gpu import FULL, pipeline_config
    from pipeline.refine.gpu_memory import SAM_GIB
    from pipeline.runner.plan import plan_job

    gib = 1024**3
    cfg = pipeline_config("/in", "/out", FULL["model"], "/w/crm_r50_random.pt", gpus=1,
                          size=FULL["image_size"])
    assert cfg.input.max_pixels == 4096 * 3072
    assert cfg.refine.device == "cuda" and cfg.ray.num_gpus == 1 and cfg.model.name == "crm_r50"
    for card in (80, 16):
        p = plan_job(cfg, {"CPU": 16.0, "GPU": 1.0, "memory": 100.0 * gib}, [(16.0, 1.0)], card * gib)
        assert (p.refine_actors, p.refine_gpus, p.sam_actors) == (1, 1.0, 0)
        assert p.gpu.refine_bytes < 0.9 * card * gib
    assert FULL["sam_model"] in SAM_GIB
