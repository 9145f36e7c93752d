"""End to end: Ray Train TorchTrainer on tiny inputs, checkpoints, kill + resume, exported weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.train import build_parser, main
from pipeline.io.weights import read_state_dict
from pipeline.models import build_model
from pipeline.train.checkpoint import list_checkpoints, load_latest, save_train_state
from tests.helpers import write_composites

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--batch-size", "2", "--crop", "64", "--patch", "16", "--patches", "1", "--log-every", "1",
        "--ckpt-every", "1", "--model", "crm_mnv2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """4 composites (96x128) in the prefix layout with ground truth."""
    root = tmp_path_factory.mktemp("tiny_train")
    write_composites(root, 4, 96, 128, seed=0, colour=(30, 160, 90))
    return root


def _log(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]


def test_help_lists_the_options() -> None:
    text = build_parser().format_help()
    for flag in ("--data", "--photos", "--checkpoint-dir", "--num-workers", "--init-checkpoint",
                 "--sam-cache",
                 "--loss-weights", "--lr-milestones", "--no-ray", "--export",
                 "--time-budget", "--epoch-repeats"):
        assert flag in text


def test_torchtrainer_checkpoints_then_resumes(ray_local, tiny_data: Path, tmp_path: Path, capsys) -> None:
    ckpt, weights = tmp_path / "ckpt", tmp_path / "w.pt"
    assert main(["--data", str(tiny_data), "--steps", "2", "--checkpoint-dir", str(ckpt),
                 "--export", str(weights), *TINY]) == 0
    assert [s for s, _ in list_checkpoints(str(ckpt))] == [1, 2]
    assert (ckpt / "latest").read_text() == "ckpt-00000002.pt"
    log = _log(ckpt)
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["total"]) for r in log)
    state = read_state_dict(str(weights))  # exported in the official key style, loads strictly
    model = build_model("crm_mnv2", checkpoint=str(weights))
    assert set(model.state_dict()) == {k.removeprefix("module.") for k in state}
    # resume (same loop, in-process this time) continues at step 3 with the saved optimizer state
    capsys.readouterr()
    args = ["--data", str(tiny_data), "--steps", "4", "--checkpoint-dir", str(ckpt), "--no-ray", *TINY]
    assert main(args) == 0
    assert '"event": "resumed", "step": 2' in capsys.readouterr().out
    assert [r["step"] for r in _log(ckpt)] == [1, 2, 3, 4]
    assert [s for s, _ in list_checkpoints(str(ckpt))] == [2, 3, 4]  # keep 3


def test_kill_mid_run_then_resume(tiny_data: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "jobs.train", "--data", str(tiny_data), "--steps", "1000", "--no-ray",
           "--checkpoint-dir", str(ckpt), *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600  # a loaded machine: the loop ends as soon as step 2 is the latest

        def latest_step() -> int:  # the marker is written after the file: wait for it, not the file
            if len(list_checkpoints(str(ckpt))) < 2 or not (ckpt / "latest").exists():
                return 0
            state = load_latest(str(ckpt))
            return state["step"] if state else 0

        while time.time() < deadline and latest_step() < 2:
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = load_latest(str(ckpt))
    assert done is not None and done["step"] >= 2
    # a half-written newer file (killed while saving) is skipped when the marker points elsewhere
    (ckpt / "ckpt-99999998.pt").write_bytes(b"truncated")
    (ckpt / "latest").unlink()
    assert load_latest(str(ckpt))["step"] == done["step"]
    (ckpt / "ckpt-99999998.pt").unlink()
    assert main(["--data", str(tiny_data), "--steps", str(done["step"] + 1), "--no-ray",
                 "--checkpoint-dir", str(ckpt), *TINY]) == 0
    assert load_latest(str(ckpt))["step"] == done["step"] + 1


def test_checkpoint_to_memory_fs() -> None:
    uri = f"memory://samsr-train-{os.getpid()}/ck"
    model = build_model("crm_mnv2")
    save_train_state(uri, {"step": 5, "model": model.state_dict(), "log": [{"step": 5, "total": 1.0}]})
    got = load_latest(uri)
    assert got["step"] == 5 and set(got["model"]) == set(model.state_dict())
    key = "imnet.layers.0.weight"
    torch.testing.assert_close(got["model"][key], model.state_dict()[key])
    with pytest.raises(ValueError, match="step"):
        save_train_state(uri, {"model": {}})


def test_fit_steps_scales_run_and_milestones() -> None:
    from pipeline.train.loop import TrainConfig, fit_steps

    cfg = TrainConfig(checkpoint_dir="x", steps=1000, lr_milestones=(500, 900))
    steps, miles = fit_steps(cfg, 50, seconds_left=100.0, s_per_step=0.5)  # 97% of 100 s -> 194 more
    assert steps == 50 + 194 and miles == [int(500 * 244 / 1000), int(900 * 244 / 1000)]
    assert fit_steps(cfg, 50, 1e6, 0.5) == (1000, [500, 900]), "never past --steps"
    assert fit_steps(cfg, 50, -5.0, 0.5)[0] == 51, "over budget: one more step, then stop"
    default = TrainConfig(checkpoint_dir="x", steps=600)
    assert fit_steps(default, 10, 1e6, 1.0) == (600, [300, 500])
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(checkpoint_dir="x", time_budget_s=0)


def test_replan_gives_a_slow_start_its_length_back_until_the_decay_begins() -> None:
    from pipeline.train.loop import TrainConfig, fit_steps, replan

    cfg = TrainConfig(checkpoint_dir="x", steps=10_000, lr_milestones=(5000, 8000))
    # first timing slowed by something else: 3 s/step over the first window, 3,000 s left
    steps, miles = replan(cfg, 50, 3000.0, 3.0, [5000, 8000], first=True)
    assert (steps, miles) == fit_steps(cfg, 50, 3000.0, 3.0) and steps == 50 + 970
    # quiet again (1 s/step) at step 250 with 2,400 s left: the decay (at 510) has not begun -> longer
    longer = replan(cfg, 250, 2400.0, 1.0, miles)
    assert longer == fit_steps(cfg, 250, 2400.0, 1.0) and longer[0] == 250 + 2328
    assert longer[1] == [int(m * (longer[0] / 10_000)) for m in (5000, 8000)]
    # once the run is past its first milestone, the plan stays (the decay is not undone) ...
    assert replan(cfg, 1300, 1000.0, 0.5, longer[1]) is None
    # ... and a re-plan whose own first milestone would already be behind is refused too
    assert replan(cfg, 600, 10.0, 1.0, [1000, 1600]) is None
    # a run that slowed down is cut while its decay is still ahead
    shorter = replan(cfg, 250, 600.0, 2.0, longer[1])
    assert shorter is not None and shorter[0] == 250 + 291 and all(m > 250 for m in shorter[1])


def test_time_budget_ends_the_run_early_and_exports(tiny_data: Path, tmp_path: Path, capsys) -> None:
    ckpt, export = tmp_path / "ckpt", tmp_path / "w.pt"
    # 20,000 steps cannot fit in 12 s: after 50 timed steps the run is cut to what fits
    args = ["--no-ray", "--data", str(tiny_data), "--checkpoint-dir", str(ckpt), "--steps", "20000",
            "--time-budget", "0.2", "--export", str(export), "--threads", "1", *TINY,
            "--log-every", "5", "--ckpt-every", "100000"]
    t = time.time()
    assert main(args) == 0
    wall = time.time() - t
    events = [json.loads(line[len("[train] "):]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("[train] {")]
    budget = [e for e in events if e.get("event") == "time_budget"]  # the first plan, then re-plans
    assert budget and all(50 < b["steps"] < 20000 for b in budget)
    n, miles = budget[-1]["steps"], budget[-1]["lr_milestones"]
    assert len(miles) == 2 and abs(miles[0] - n / 2) <= 1 and abs(miles[1] - n * 5 / 6) <= 1
    last = load_latest(str(ckpt))["step"]
    assert 50 <= last <= n, "stopped at the estimate (or earlier, by the hard limit)"
    assert wall < 12 + 120, "ends near its budget, not after 20,000 steps"
    read_state_dict(str(export))
