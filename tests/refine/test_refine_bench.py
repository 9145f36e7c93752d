"""The refiner benchmark runs end to end on a tiny input (children, watchdog, comparison)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.bench import refiner as bench


def test_synthetic_case_shapes():
    image, coarse = bench.synthetic_case(64, 48, seed=1)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert coarse.shape == (6, 8) and coarse.dtype == np.uint8
    assert 0 < (coarse > 128).mean() < 1


def test_run_reports_each_configuration(tmp_path):
    lines: list[str] = []
    rows = bench.run(
        sizes=[(56, 40)],
        device="cpu",
        out=lines.append,
        configs=("official", "exact", "strided"),
        model="crm_mnv2",
        threads=1,
        memory_limit_gb=8,
    )
    assert [r["config"] for r in rows] == ["official", "exact", "strided"]
    assert all(r["status"] == "ok" for r in rows), rows
    exact = rows[1]
    assert exact["max_abs_diff"] <= 1e-4 and exact["agreement"] > 0.999 and exact["reference"] == "official"
    assert exact["speedup"] > 0 and exact["memory_ratio"] > 0 and exact["peak_bytes"] > 0
    assert "speedup" in lines[-1] and "56x40" in lines[-1]
    path = tmp_path / "rows.json"
    assert (
        bench.main(
            [
                "--sizes",
                "40x32",
                "--configs",
                "exact",
                "--model",
                "crm_mnv2",
                "--threads",
                "1",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert json.loads(path.read_text())[0]["status"] == "ok"


def test_watchdog_kills_a_child_over_the_limit():
    rows = bench.run(
        sizes=[(40, 32)],
        device="cpu",
        out=lambda _: None,
        configs=("exact",),
        model="crm_mnv2",
        threads=1,
        memory_limit_gb=0.05,
    )
    assert rows[0]["status"] == "exceeded" and "limit" in rows[0]["error"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown benchmark configuration"):
        bench.run(sizes=[(8, 8)], configs=("fastest",))
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "big"])
