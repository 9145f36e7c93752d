"""The ``samsr`` command: help for every subcommand, dispatch, and config errors before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_help_lists_every_command():
    exe = Path(sys.executable).parent / "samsr"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert name in r.stdout
    assert set(COMMANDS) == {"refine", "relabel", "evaluate", "query", "report", "benchmark", "train",
                             "weights", "review"}


@pytest.mark.parametrize(
    "command, expected",
    [
        ("refine", ["--config", "--set KEY=VALUE", "--input", "--output", "--method", "--decode"]),
        ("evaluate", ["OUTPUT_PREFIX", "--job-id", "--json"]),
        ("query", ["MANIFEST_PREFIX", "--summary", "--worst N", "--failures", "--format"]),
        ("report", ["OUTPUT", "--out", "--worst", "--best"]),
        ("benchmark", ["refiner", "sam", "quality", "trust"]),
        ("train", ["usage: samsr train"]),
        ("weights", ["usage: samsr weights", "average"]),
        ("review", ["usage: samsr review", "export", "import"]),
    ],
)
def test_each_subcommand_has_accurate_help(command, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: samsr {command}") or "usage: samsr train" in expected
    for text in expected:
        assert text in out, (command, text)


@pytest.mark.parametrize("name", ["refiner", "sam", "quality", "trust"])
def test_benchmark_dispatches_to_the_bench_modules(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command_and_no_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["refin"])
    assert e.value.code == 2 and "invalid choice: 'refin'" in capsys.readouterr().err
    assert main([]) == 2


def test_refine_config_errors_exit_2_naming_the_key_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "refine",
        "--input",
        str(tmp_path),
        "--output",
        str(out),
        "--checkpoint",
        str(tmp_path / "none.pt"),
    ]
    assert main([*args, "--set", "refine.decode=fast"]) == 2
    assert "config error: refine.decode: must be one of" in capsys.readouterr().err
    assert main([*args, "--set", "ray.bogus=1"]) == 2
    assert "config error: ray.bogus: unknown key" in capsys.readouterr().err
    assert main(args) == 2
    assert "config error: model.checkpoint: file not found" in capsys.readouterr().err
    assert not out.exists()


def test_refine_input_that_cannot_be_listed_exits_2(tmp_path, capsys):
    import torch

    from pipeline.io.weights import save_checkpoint
    from pipeline.models import build_model

    torch.manual_seed(0)
    save_checkpoint(build_model("crm_mnv2"), str(tmp_path / "w.pt"))
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "refine",
            "--input",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tmp_path / "w.pt"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "error: input.uri: no samples found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_print_config_resolves_flags_and_overrides(capsys):
    import json

    code = main(
        [
            "refine",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--decode",
            "strided",
            "--set",
            "refine.stride=8",
            "--soft",
            "--print-config",
        ]
    )
    assert code == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (
        cfg["refine"]["decode"] == "strided"
        and cfg["refine"]["stride"] == 8
        and cfg["output"]["soft"] is True
    )
    assert cfg["method"] == "samsr-v2.1" and cfg["sam"]["proposals"] == "regions"
    assert cfg["job_id"].startswith("demo-")


@pytest.mark.parametrize("module", ["jobs.refine", "jobs.evaluate", "jobs.query", "jobs.benchmark"])
def test_jobs_run_as_python_m(module):
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, cwd=str(ROOT)
    )
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_benchmark_exit_code_when_a_benchmark_returns_its_result(monkeypatch):
    """A benchmark main() may return its result (a dict): the command still exits 0, not a TypeError."""
    import types

    import jobs.benchmark as bench

    fake = types.ModuleType("fake_bench")
    fake.main = lambda argv: {"rows": [1, 2]}
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setitem(bench.BENCHMARKS, "fake", ("fake_bench", "returns a dict"))
    assert bench.main(["fake"]) == 0
    fake.main = lambda argv: 3
    assert bench.main(["fake"]) == 3


def test_print_config_does_not_import_torch_or_ray():
    """`--print-config` answers at once: validating refine.options needs no torch (issue 13)."""
    code = ("import sys; from jobs.refine import main; "
            "rc = main(['--config', 'configs/demo.yaml', '--print-config']); "
            "heavy = [m for m in ('torch', 'ray', 'cv2') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"method": "samsr-v2.1"' in r.stdout


def test_output_into_a_closed_pipe_exits_quietly():
    """`samsr refine --print-config | head -1`: no BrokenPipeError traceback, exit status 141.
    The pipe's read end is closed before the command starts, so its first write fails."""
    import os

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "refine", "--config", "configs/demo.yaml",
                            "--print-config"], stdout=write_fd, stderr=subprocess.PIPE, text=True,
                           cwd=str(ROOT), timeout=120)
    finally:
        os.close(write_fd)
    assert r.returncode == 141 and "Traceback" not in r.stderr, r.stderr


def test_demo_with_regions_proposals_shows_our_output_not_ray_notices(tmp_path):
    """A fresh process, as a user runs it: SAM-SR-v1 on the shipped weights with the regions
    proposals (no SAM weights), through a local Ray it starts and stops. The user sees our
    summary; Ray's notices about choices we made (token auth kept on, its progress bars off in
    favour of ours) or Ray Data made (actor pools restartable with constructor arguments in the
    object store: an error-level C++ line) are not printed."""
    out = tmp_path / "v1"
    r = subprocess.run(
        [sys.executable, "-m", "jobs.refine", "--config", "configs/demo.yaml", "--method", "samsr-v1",
         "--model", "crm_mnv2", "--checkpoint", "pipeline/weights/crm_mnv2.pt", "--proposals", "regions",
         "--limit", "1", "--output", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=str(ROOT),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok 1, failed 0" in r.stdout and "refined" in r.stdout
    for notice in ("Token authentication is enabled", "Progress bars disabled",
                   "has constructor arguments in the object store"):
        assert notice not in r.stderr, notice
    import pyarrow.parquet as pq

    rows = pq.read_table(str(out / "manifest")).to_pylist()
    assert [(x["method"], x["sam_model"], x["status"]) for x in rows] == [
        ("samsr-v1", "regions:felzenszwalb", "ok")]
    assert rows[0]["sam_mask_count"] > 10


@pytest.mark.parametrize(
    "args, expect",
    [
        (["sam", "--model-type", "tiny", "--height", "64", "--width", "96", "--points-per-side", "4",
          "--threads", "1"], "identical masks: True"),
        (["relabel", "--images", "20", "--annotations", "100"], "plan: 20 images, 100 annotations"),
        (["proposals", "--limit", "1", "--threads", "1"], "ratio"),
    ],
    ids=["sam", "relabel", "proposals"],
)
def test_benchmark_verbs_run_end_to_end_and_exit_0(args, expect, capsys):
    """Each `samsr benchmark` verb at a tiny size, through the CLI: its table, exit status 0
    (`refiner` and `quality` have their own end-to-end tests)."""
    assert main(["benchmark", *args]) == 0
    assert expect in capsys.readouterr().out
