"""Benchmarks on any device: warm-up before the timer, one device on both sides, the card named,
TF32 off where outputs are compared."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.bench.device import device_name, exact_math, timed
from pipeline.bench.gpu import release_cached_memory
from pipeline.bench.pipeline import bare_device
from pipeline.bench.refiner import format_table, synthetic_case, timed_refine
from pipeline.bench.sam import _timed
from pipeline.models import build_model
from pipeline.refine import RefineOptions, prepare_model


def test_timed_warms_up_before_the_clock_starts():
    events = []

    def clock():
        events.append("clock")
        return float(len(events))

    out, wall = timed(lambda: events.append("run") or 7, "cpu", lambda: events.append("warm"), clock)
    assert events == ["warm", "clock", "run", "clock"] and out == 7 and wall == 2.0
    events.clear()
    timed(lambda: events.append("run"), "cpu", clock=clock)  # without a warm-up: fn itself, untimed
    assert events == ["run", "clock", "run", "clock"]


def test_refiner_benchmark_warms_the_model_up_untimed():
    torch.manual_seed(0)
    options = RefineOptions(scales=(0.5, 1.0))
    model = prepare_model(build_model("crm_mnv2"), options)
    forwards, seen_at_clock = [], []
    handle = model.feats.register_forward_hook(lambda *a: forwards.append(1))

    def clock():
        seen_at_clock.append(len(forwards))
        return 0.0

    try:
        image, coarse = synthetic_case(96, 64)
        prob, _ = timed_refine(model, image, coarse, options, "cpu", clock)
    finally:
        handle.remove()
    assert prob.shape == (64, 96) and prob.dtype == np.float32
    assert seen_at_clock[0] >= 2  # the warm-up's encoder passes ran before the timer started
    assert seen_at_clock[1] - seen_at_clock[0] >= 2  # and the timed refine ran between the readings


def test_sam_benchmark_warms_each_generator_up():
    calls = []
    out, wall, cpu = _timed(lambda: calls.append(1) or len(calls), 2)
    assert len(calls) == 3 and out == 3 and wall >= 0 and cpu >= 0  # one warm-up + 2 timed


def test_bare_loop_uses_the_ray_runs_device():
    assert bare_device("auto", cuda_visible=True) == "cuda"  # the Ray actors get the GPU
    assert bare_device("auto", cuda_visible=False) == "cpu"
    assert bare_device("cpu", cuda_visible=True) == "cpu"
    assert bare_device("cuda", cuda_visible=True) == "cuda"


def test_tables_name_the_device_and_tf32_is_off():
    name = device_name("cpu")
    assert name.startswith("cpu (") and f"{torch.get_num_threads()} threads" in name
    row = dict(size="64x48", config="exact", status="ok", wall_s=1.0, peak_bytes=2**30, device="cpu",
               device_name=name)
    assert format_table([row]).splitlines()[0] == f"device: {name}"
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        exact_math()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert release_cached_memory("cpu") == 0
