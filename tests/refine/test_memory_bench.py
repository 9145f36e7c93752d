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
