"""`samsr benchmark memory`: registration, argument checks, the per-actor ask fit, the table."""

from __future__ import annotations

import pytest

from jobs.benchmark import BENCHMARKS
from pipeline.bench import memory

GIB = 1024**3


def _row(pixels, peak, model="crm_mnv2", mode="tiled", status="ok"):
    return dict(size="x", pixels=pixels, model=model, mode=mode, status=status, error=None, wall_s=1.0,
                peak_rss=peak, rss_before=None, agreement=None, max_abs_diff=None, time_ratio=None,
                memory_ratio=None)


def test_registered_and_bad_arguments_fail_before_any_work():
    assert BENCHMARKS["memory"][0] == "pipeline.bench.memory"
    with pytest.raises(SystemExit):
        memory.main(["--models", "no_such_model"])
    with pytest.raises(SystemExit):
        memory.main(["--sizes", "huge"])
    with pytest.raises(ValueError, match="tile_encoder"):
        memory.run([(100, 100)], tile=8, out=lambda _: None)


def test_fit_ask_recovers_constant_and_slope_from_tiled_ok_rows_only():
    rows = [_row(p, 1.5 * GIB + 40 * p) for p in (12e6, 48e6, 192e6)]
    rows += [_row(12e6, 99 * GIB, mode="untiled"), _row(3e6, None, status="timeout"),
             _row(12e6, 2 * GIB, model="crm_r50")]  # one size only: no fit
    fits = memory.fit_ask(rows)
    assert set(fits) == {"crm_mnv2"}
    a, b = fits["crm_mnv2"]
    assert a == pytest.approx(1.5) and b == pytest.approx(40)


def test_table_shows_skipped_rows_with_their_reason():
    rows = [_row(48e6, None, mode="untiled", status="skipped"), _row(48e6, 3.31 * GIB)]
    rows[0]["error"] = "untiled above 16 MP: not run"
    table = memory.format_table(rows)
    assert "untiled above 16 MP: not run" in table and "3.31" in table


def test_watch_reports_every_process_of_the_tree_with_its_peak(capsys):
    """`--watch`: a command whose child holds 300 MB; the child is found, named, and its peak read."""
    import sys

    from pipeline.bench.proctree import watch

    child = ("import time, numpy as np; a = np.ones(300 * 2**20, np.uint8); time.sleep(1.5)")
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    code, wall, peaks = watch([sys.executable, "-c", parent], interval=0.05)
    assert code == 0 and wall >= 1.5 and len(peaks) == 2
    holder = peaks[0]  # largest first
    assert holder.peak >= 300 * 2**20 and "np.ones" in holder.name
    assert peaks[1].peak < holder.peak
    assert memory.main(["--watch", "--limit-gb", "0.2", "--", sys.executable, "-c", parent]) == 1
    out = capsys.readouterr().out
    assert "exit code 0" in out and "over 0.2 GiB" in out


def test_stages_measure_each_stage_of_the_path():
    """`--stages` at a small size: one row per stage, in the pipeline's order, with its peak."""
    from pipeline.bench.path_memory import run_stages

    rows = run_stages(640, 480, out=lambda _: None)
    assert [r["stage"] for r in rows] == [
        "decode image (JPEG)", "decode + upsample coarse", "decode truth (PNG)",
        "refine (strided, 1/8 scale)", "edge check", "trust features", "per-change acceptance",
        "binary + soft masks",
        "metrics (coarse, refined)", "PNG encode (binary, soft)"]
    assert all(r["extra"] >= 0 and r["seconds"] >= 0 for r in rows)
    # decoding a 640x480 image holds at least its 0.9 MB of pixels above what came before
    assert rows[0]["extra"] >= 640 * 480 * 3 * 0.9
