"""`samsr benchmark trust`'s statistics and fitting (`pipeline.bench.trust`), pinned to references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from pipeline.bench.trust import choose_min_score, fit_trust_model, roc_auc, spearman, summarise


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)
    b = a + rng.normal(0, 2, 40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_roc_auc_is_the_share_of_correctly_ordered_pairs():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 6, 30).astype(float)
    pos = rng.random(30) < 0.4
    pairs = [(1.0 if sp > sn else 0.5 if sp == sn else 0.0)
             for (sp, p), (sn, n) in itertools.product(zip(score, pos), repeat=2) if p and not n]
    assert roc_auc(score, pos) == pytest.approx(np.mean(pairs))
    assert roc_auc([1, 2, 3], [True, True, True]) is None
    assert roc_auc([3, 2, 1], [True, False, False]) == 1.0


def _rows(n: int = 200, seed: int = 0) -> list[dict]:
    """Synthetic rows: the gain grows with shift_px and falls with coarse_edge (plus noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = ("good", "rough")[i % 2]
        shift = rng.uniform(0.0, 0.4) if kind == "good" else rng.uniform(0.3, 3.0)
        edge = rng.uniform(1.5, 2.5) if kind == "good" else rng.uniform(0.8, 1.6)
        gain = 0.02 * shift - 0.01 * (edge - 1.2) + rng.normal(0, 0.003)
        feats = {"shift_px": shift, "area_change": 0.0, "thin_share": 0.5, "band_uncertainty": 0.1,
                 "band_spread": 0.02, "coarse_edge": edge, "edge_gain": 0.1, "coarse_detail": 0.1}
        rows.append({"key": f"k{i}", "kind": kind, "mba_coarse": 0.7, "mba_refined": 0.7 + gain, **feats,
                     "offset_truth": 0.0, "offset_coarse": 0.1, "offset_refined": 0.2, "refine_s": 1.0,
                     "trust_s": 0.01})
    return rows


def test_fit_learns_the_direction_of_the_features_and_ranks_held_out_rows():
    model = fit_trust_model(_rows(seed=0), features=("shift_px", "coarse_edge"))
    coef = dict(zip(model.features, model.coef))
    assert coef["shift_px"] > 0 and coef["coarse_edge"] < 0
    test = _rows(seed=1)
    s = [model.score(r) for r in test]
    gain = [r["mba_refined"] - r["mba_coarse"] for r in test]
    assert spearman(s, gain) > 0.7
    assert roc_auc(-np.asarray(s), np.asarray(gain) < 0) > 0.9
    with pytest.raises(ValueError, match="need >= 10"):
        fit_trust_model(test[:5])


def test_min_score_meets_the_do_no_harm_targets_on_every_kind():
    rows = _rows(seed=2)
    model = fit_trust_model(rows, features=("shift_px", "coarse_edge"))
    scores = [model.score(r) for r in rows]
    for r, s in zip(rows, scores):
        r["score"] = s
    t = choose_min_score(rows, scores, max_worse=0.05)
    summary = summarise(rows, t)
    for kind in ("good", "rough"):
        k = summary[kind]
        assert k["worse_accepted"] <= 5 and k["mba_accepted"] >= k["mba_coarse"] - 1e-9
    assert summary["rough"]["gain_kept"] > 80  # rough masks keep most of their gain
    assert summary["good"]["worse_refined"] > 20  # ... while the good ones were often made worse
    assert choose_min_score(rows, scores, max_worse=0.05) <= choose_min_score(rows, scores, max_worse=0.0)


def test_summarise_regions_reads_each_rows_per_change_outcome():
    rows = _rows(n=4, seed=3)
    for r, (mba, share) in zip(rows, [(0.69, 0.5), (0.72, 1.0), (0.71, 0.25), (0.70, None)]):
        r.update(score=0.1, mba_regions=mba, regions_share=share, offset_regions=0.3, regions_s=0.02)
    good = summarise(rows, 0.5, "regions")["good"]  # rows 0 and 2
    assert good["mba_accepted"] == pytest.approx(70.0) and good["worse_accepted"] == 50
    assert good["accepted"] == pytest.approx(37.5) and good["offset_accepted"] == pytest.approx(0.3)
    assert good["trust_s"] == pytest.approx(0.03)
    assert summarise(rows, 0.5)["good"]["accepted"] == 0  # the image policy: every score below 0.5
    with pytest.raises(ValueError, match="without mba_regions"):
        summarise([{**r, "score": 0.1} for r in _rows(n=4)], 0.5, "regions")


def test_benchmark_trust_end_to_end_with_the_shipped_files(tmp_path, capsys):
    """`samsr benchmark trust` on the bundled samples (small): the demo config, the shipped weights
    and trust model; rows saved, a model fitted from them, then rescored from the rows alone."""
    import shutil
    from pathlib import Path

    from jobs.cli import main

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        for suffix in ("_im.jpg", "_gt.png"):
            shutil.copy(root / "samples" / "demo" / f"demo{i}{suffix}", data / f"demo{i}{suffix}")
    rows_file, fitted = tmp_path / "rows.json", tmp_path / "trust.json"
    config = str(root / "configs" / "demo.yaml")
    assert main(["benchmark", "trust", "--data", str(data), "--max-side", "160", "--config", config,
                 "--kinds", "identity,lowres16,blocky8,perturbed", "--rows", str(rows_file)]) == 0
    out = capsys.readouterr().out
    for kind in ("identity", "lowres16", "blocky8", "perturbed"):
        assert f"| {kind} | 3 |" in out
    import json

    rows = json.loads(rows_file.read_text())
    assert len(rows) == 12 and all(0 < r["score"] < 1 for r in rows)
    assert all(r["offset_truth"] == rows[0]["offset_truth"] for r in rows if r["key"] == rows[0]["key"])
    ident = [r for r in rows if r["kind"] == "identity"]
    assert all(r["mba_coarse"] == 1.0 and r["shift_px"] >= 0 for r in ident)
    assert main(["benchmark", "trust", "--from-rows", str(rows_file), "--fit", str(fitted),
                 "--config", config]) == 0
    assert "fitted on 12 rows" in capsys.readouterr().out
    from pipeline.refine.trust import load_trust_model

    model = load_trust_model(str(fitted))
    assert model.meta["rows"] == 12 and 0 <= model.min_score <= 1
    assert main(["benchmark", "trust", "--from-rows", str(rows_file), "--trust-model", str(fitted),
                 "--config", config]) == 0
    assert f"min_score {model.min_score:.3f}" in capsys.readouterr().out
    # the per-change policy with the shipped region model, measured while refining
    regions_rows = tmp_path / "regions.json"
    assert main(["benchmark", "trust", "--data", str(data), "--max-side", "160", "--config", config,
                 "--kinds", "identity,perturbed", "--policy", "regions", "--rows", str(regions_rows)]) == 0
    out = capsys.readouterr().out
    assert "policy regions, region model shipped" in out and "| perturbed | 3 |" in out
    rows = json.loads(regions_rows.read_text())
    assert all(r["mba_regions"] is not None and r["regions_s"] >= 0 for r in rows)
    assert all(r["regions_share"] is None or 0 <= r["regions_share"] <= 1 for r in rows)


def test_move_line_moves_the_line_by_whole_pixels():
    from pipeline.boundary import move_line

    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 255
    assert np.count_nonzero(move_line(truth, 1)) == 10 * 10 + 4 * 10  # a cross: no corners
    assert np.count_nonzero(move_line(truth, -1)) == 8 * 8
    assert move_line(truth, 0) is truth
