"""`samsr benchmark quality`: coarse kinds pinned to their definitions, and the table's numbers equal
pipeline.metrics on the same masks (run end to end through the CLI at a tiny size)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from jobs.cli import main as cli_main
from pipeline.bench.quality import KINDS, check_kind, make_coarse
from pipeline.io.weights import save_checkpoint
from pipeline.metrics import dataset_iou, image_metrics
from pipeline.models import build_model
from pipeline.train.composites import make_composite
from pipeline.train.perturb import mask_iou
from tests.helpers import write_composites


def _disc(h: int = 400, w: int = 600) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    cv2.circle(gt, (w // 2, h // 2), min(h, w) // 3, 255, -1)
    cv2.rectangle(gt, (40, 40), (140, 90), 255, -1)
    return gt


def test_coarse_kinds_follow_their_definitions() -> None:
    gt = _disc()
    assert np.array_equal(make_coarse(gt, "identity", "k"), gt)
    for f in (8, 16):
        small = cv2.resize(gt, (round(600 / f), round(400 / f)), interpolation=cv2.INTER_AREA)
        want = np.where(cv2.resize(small, (600, 400), interpolation=cv2.INTER_LINEAR) > 128, 255, 0)
        assert np.array_equal(make_coarse(gt, f"lowres{f}", "k"), want)
    p1, p2 = make_coarse(gt, "perturbed", "k"), make_coarse(gt, "perturbed", "k")
    assert np.array_equal(p1, p2), "seeded per key"
    assert not np.array_equal(p1, make_coarse(gt, "perturbed", "other"))
    assert 0.70 <= mask_iou(p1, gt) <= 0.92
    with pytest.raises(ValueError, match="unknown coarse kind 'lowres'"):
        make_coarse(gt, "lowres", "k")


def test_factor_kinds_by_name_and_the_staircase() -> None:
    gt = _disc()  # 400 x 600: factors 4 and 8 divide both sides
    small4 = cv2.resize(gt, (150, 100), interpolation=cv2.INTER_AREA)
    want = np.where(cv2.resize(small4, (600, 400), interpolation=cv2.INTER_LINEAR) > 128, 255, 0)
    assert np.array_equal(make_coarse(gt, "lowres4", "k"), want)
    for f in (4, 8):
        blocky = make_coarse(gt, f"blocky{f}", "k")
        small = np.where(cv2.resize(gt, (600 // f, 400 // f), interpolation=cv2.INTER_AREA) > 128, 255, 0)
        assert np.array_equal(blocky, np.kron(small, np.ones((f, f), np.int64))), "pixel replication"
        assert set(np.unique(blocky)) == {0, 255} and blocky.dtype == np.uint8
        assert not np.array_equal(blocky, make_coarse(gt, f"lowres{f}", "k")), "a staircase, not a line"
        assert mask_iou(blocky, gt) > 0.9
    for bad in ("lowres1", "blocky65", "blocky", "blocky8x", "Lowres8"):
        with pytest.raises(ValueError, match=f"unknown coarse kind '{bad}'.*lowresN or blockyN with N = 2"):
            make_coarse(gt, bad, "k")
    assert check_kind("blocky64") == "blocky64" and check_kind("identity") == "identity"


#: the light CRM run the official way (the benchmark's defaults are the demo's SAM-SR-v2.1 settings)
CRM = ["--method", "crm", "--model", "crm_mnv2", "--tta", "none", "--edge-check", "off", "--threshold", "0.5"]


def test_quality_benchmark_defaults_are_the_demo_configs_settings() -> None:
    """What `samsr benchmark quality` measures by default is what `make demo` runs."""
    import argparse
    from unittest import mock

    from pipeline.bench import quality
    from pipeline.config import load_config

    demo = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"))
    seen = {}

    def stop(self, args=None, namespace=None):
        parsed = real(self, ["--data", "x"])
        seen.update(vars(parsed))
        raise SystemExit(0)

    real = argparse.ArgumentParser.parse_args
    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop), pytest.raises(SystemExit):
        quality.main([])
    o = demo.refine.options
    assert (seen["method"], seen["model"], seen["weights"], seen["proposals"]) == (
        demo.method, demo.model.name, demo.model.checkpoint, demo.sam.proposals)
    assert [float(v) for v in seen["scales"].split(",")] == o["scales"] and seen["align"] == o["align"]
    assert (seen["tta"], seen["edge_check"], seen["threshold"], seen["decode"]) == (
        o["tta"], o["edge_check"], o["threshold"], demo.refine.decode)


def test_quality_benchmark_end_to_end(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    gts = write_composites(data, 2, 72, 96, seed=3, colour=(40, 90, 200), kind="blob", prefix="h", ext="png",
                           seg=False, first=10)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model("crm_mnv2"), str(weights))
    out = tmp_path / "q.json"
    code = cli_main(["benchmark", "quality", "--data", str(data), "--weights", str(weights), *CRM,
                     "--scales", "0.5,1",
                     "--kinds", "lowres8,identity,blocky4", "--json", str(out), "--threads", "1",
                     "--save-masks", str(tmp_path / "masks")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| lowres8 | 2 |" in printed and "| identity | 2 |" in printed
    result = json.loads(out.read_text())
    assert set(result["kinds"]) == {"lowres8", "identity", "blocky4"} and result["n"] == 2
    assert "| blocky4 | 2 |" in printed
    coarse = [image_metrics(make_coarse(g, "lowres8", f"h{i}"), g) for i, g in enumerate(gts)]
    got = result["kinds"]["lowres8"]["coarse"]
    assert got["iou"] == pytest.approx(100 * dataset_iou([m["intersection"] for m in coarse],
                                                         [m["union"] for m in coarse]))
    assert got["mba"] == pytest.approx(100 * np.mean([m["mba"] for m in coarse]))
    ident = result["kinds"]["identity"]["coarse"]
    assert ident["iou"] == pytest.approx(100) and ident["mba"] == pytest.approx(100) and ident["area"] == 0
    rows = [r for r in result["per_image"] if r["kind"] == "identity"]
    worse = sum(r["refined"]["mba"] < r["coarse"]["mba"] for r in rows)
    assert result["kinds"]["identity"]["worse"] == pytest.approx(100 * worse / 2)
    # edge offsets: the identity coarse mask is the truth, so both offsets are the truth's
    k = result["kinds"]["identity"]
    assert k["coarse"]["edge_offset"] == pytest.approx(k["truth_edge_offset"])
    assert all(r["coarse"]["edge_offset"] == r["truth_edge_offset"] for r in rows)
    assert "edge offset px (truth)" in printed
    assert KINDS == ("lowres8", "lowres16", "perturbed", "identity")
    # --save-masks: the truth and each kind's coarse / refined mask, as judged
    saved = tmp_path / "masks"
    assert len(list(saved.glob("*.png"))) == 2 * (1 + 3 * 2)
    for i, g in enumerate(gts):
        assert np.array_equal(cv2.imread(str(saved / f"h{i}_truth.png"), cv2.IMREAD_UNCHANGED), g)
        assert np.array_equal(cv2.imread(str(saved / f"h{i}_lowres8_coarse.png"), cv2.IMREAD_UNCHANGED),
                              make_coarse(g, "lowres8", f"h{i}"))
        assert np.array_equal(cv2.imread(str(saved / f"h{i}_blocky4_coarse.png"), cv2.IMREAD_UNCHANGED),
                              make_coarse(g, "blocky4", f"h{i}"))
    with pytest.raises(SystemExit):
        cli_main(["benchmark", "quality", "--data", str(data), "--weights", str(weights), *CRM,
                  "--kinds", "blocky1"])
    assert "--kinds: unknown coarse kind 'blocky1'" in capsys.readouterr().err
    row = next(r for r in result["per_image"] if r["key"] == "h0" and r["kind"] == "identity")
    refined = cv2.imread(str(saved / "h0_identity_refined.png"), cv2.IMREAD_UNCHANGED)
    assert image_metrics(refined, gts[0])["mba"] == pytest.approx(row["refined"]["mba"])


def test_quality_benchmark_prints_each_source_alone(tmp_path: Path, capsys) -> None:
    """Two --data folders: the combined table, then one per folder whose numbers equal a run on
    that folder alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder, n, seed in ((a, 2, 3), (b, 1, 4)):
        write_composites(folder, n, 64, 80, seed=seed, colour=(40, 90, 200), kind="blob", prefix="s",
                         ext="png", seg=False)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model("crm_mnv2"), str(weights))
    common = ["benchmark", "quality", "--weights", str(weights), *CRM, "--kinds", "lowres8,perturbed",
              "--threads", "1"]
    both = tmp_path / "both.json"
    assert cli_main([*common, "--data", str(a), "--data", str(b), "--json", str(both)]) == 0
    printed = capsys.readouterr().out
    assert f"{a} alone (2 images):" in printed and f"{b} alone (1 images):" in printed
    assert printed.count("| lowres8 | 2 |") == 1 and printed.count("| lowres8 | 3 |") == 1
    result = json.loads(both.read_text())
    assert result["n"] == 3 and {r["source"] for r in result["per_image"]} == {str(a), str(b)}
    for folder in (a, b):  # same keys in both folders: the split goes by folder, not by key
        alone = tmp_path / f"{folder.name}.json"
        assert cli_main([*common, "--data", str(folder), "--json", str(alone)]) == 0
        want, got = json.loads(alone.read_text()), result["by_source"][str(folder)]
        assert got["n"] == want["n"] and "by_source" not in want
        for kind in ("lowres8", "perturbed"):
            for which in ("coarse", "refined"):
                for m in ("iou", "mba", "biou", "area"):
                    assert got["kinds"][kind][which][m] == pytest.approx(want["kinds"][kind][which][m])
            assert got["kinds"][kind]["worse"] == want["kinds"][kind]["worse"]


def test_max_side_shrinks_image_and_truth_together(tmp_path: Path) -> None:
    from pipeline.bench.quality import evaluate
    from pipeline.io import list_samples

    rng = np.random.default_rng(4)
    a = cv2.GaussianBlur(rng.integers(0, 255, (200, 260, 3), dtype=np.uint8), (0, 0), 4)
    b = np.full((200, 260, 3), (40, 90, 200), np.uint8)
    c = make_composite(np.random.default_rng(5), a, b, 120, 160, kind="blob")
    cv2.imwrite(str(tmp_path / "s_im.png"), c.image[..., ::-1])
    cv2.imwrite(str(tmp_path / "s_gt.png"), c.gt)
    refs = list_samples(str(tmp_path), "prefix", mask_suffix="_gt.png")
    torch.manual_seed(0)
    got = evaluate(build_model("crm_mnv2"), refs, ("identity",), log=False, max_side=80)
    assert got["per_image"][0]["size"] == [60, 80]
    small = cv2.resize(c.gt, (80, 60), interpolation=cv2.INTER_AREA)
    want = np.where(small > 128, 255, 0).astype(np.uint8)
    assert got["kinds"]["identity"]["coarse"]["iou"] == pytest.approx(100)
    assert got["per_image"][0]["coarse"]["intersection"] == np.count_nonzero(want)


def test_quality_benchmark_samsr_methods_with_regions_proposals(tmp_path: Path) -> None:
    """v2.1 from CRM weights (colour channels zeroed) scores exactly like CRM; v1 runs the merge."""
    from pipeline.io.weights import read_state_dict
    from pipeline.train.loop import init_from_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    write_composites(data, 1, 96, 128, seed=5, colour=(200, 60, 40), kind="blob", prefix="p", ext="png",
                     seg=False, first=20)
    torch.manual_seed(0)
    crm = tmp_path / "crm.pt"
    save_checkpoint(build_model("crm_mnv2"), str(crm))
    v21 = build_model("samsr_v21_mnv2")
    init_from_checkpoint(v21, read_state_dict(str(crm)), str(crm))
    v21_path = tmp_path / "v21.pt"
    save_checkpoint(v21, str(v21_path))
    results = {}
    for method, model, weights in (("crm", "crm_mnv2", crm), ("samsr-v2.1", "samsr_v21_mnv2", v21_path),
                                   ("samsr-v1", "crm_mnv2", crm)):
        out = tmp_path / f"{method}.json"
        assert cli_main(["benchmark", "quality", "--data", str(data), "--model", model, "--weights",
                         str(weights), "--method", method, "--kinds", "perturbed", "--json", str(out),
                         "--threads", "1"]) == 0
        results[method] = json.loads(out.read_text())
    got = {m: r["kinds"]["perturbed"]["refined"] for m, r in results.items()}
    assert got["samsr-v2.1"]["iou"] == pytest.approx(got["crm"]["iou"], abs=1e-4)
    assert got["samsr-v2.1"]["mba"] == pytest.approx(got["crm"]["mba"], abs=1e-4)
    assert results["samsr-v2.1"]["proposals"] == "regions" and results["crm"]["proposals"] is None
    row = results["samsr-v1"]["per_image"][0]
    assert row["gate"] in (None, "sparsity", "deformation")


def test_roi_margin_reaches_the_contour_mode(tmp_path: Path, capsys) -> None:
    """--decode contour --roi-margin M: refined masks differ from the coarse ones only within M px of
    the coarse contour, and the JSON / table name the margin."""
    data = tmp_path / "data"
    data.mkdir()
    gts = write_composites(data, 1, 72, 96, seed=5, colour=(40, 90, 200), kind="blob", prefix="m", ext="png",
                           seg=False)
    torch.manual_seed(1)
    model = build_model("crm_mnv2")
    with torch.no_grad():  # a refiner that says "object" everywhere: each decoded pixel turns on
        model.imnet.layers[8].weight.zero_()
        model.imnet.layers[8].bias.fill_(10.0)
    weights = tmp_path / "w.pt"
    save_checkpoint(model, str(weights))
    out, saved = tmp_path / "q.json", tmp_path / "masks"
    assert cli_main(["benchmark", "quality", "--data", str(data), "--weights", str(weights), *CRM, "--kinds",
                     "perturbed", "--decode", "contour", "--roi-margin", "3", "--threads", "1",
                     "--json", str(out), "--save-masks", str(saved)]) == 0
    assert "decode contour (margin 3 px)" in capsys.readouterr().out
    assert json.loads(out.read_text())["roi_margin"] == 3
    coarse = cv2.imread(str(saved / "m0_perturbed_coarse.png"), cv2.IMREAD_UNCHANGED) > 127
    refined = cv2.imread(str(saved / "m0_perturbed_refined.png"), cv2.IMREAD_UNCHANGED) > 127
    assert coarse.shape == gts[0].shape
    inside = cv2.distanceTransform(coarse.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~coarse).astype(np.uint8), cv2.DIST_L2, 3)
    far = np.maximum(inside, outside) > 3 + 1.5  # beyond the band (+ slack for the distance metric)
    assert far.any() and np.array_equal(refined[far], coarse[far])
    near = np.maximum(inside, outside) <= 3 - 1  # well inside the band: decoded, so turned on
    assert refined[near].all() and (refined & ~coarse).any()
