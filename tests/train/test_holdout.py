"""Held-out evaluation: coarse vs refined dataset IoU / mean mBA through refine() and pipeline.metrics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.io import list_samples, load_sample
from pipeline.metrics import dataset_iou, image_metrics
from pipeline.models import build_model
from pipeline.train.composites import make_composite
from pipeline.train.holdout import evaluate_holdout, format_table


def test_holdout_table_matches_the_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = cv2.GaussianBlur(rng.integers(0, 255, (200, 260, 3), dtype=np.uint8), (0, 0), 4)
    b = np.full((200, 260, 3), (40, 90, 200), np.uint8)
    for i in range(2):
        c = make_composite(np.random.default_rng(10 + i), a, b, 72, 96, kind="blob")
        cv2.imwrite(str(tmp_path / f"h{i}_im.png"), c.image[..., ::-1])
        cv2.imwrite(str(tmp_path / f"h{i}_gt.png"), c.gt)
        cv2.imwrite(str(tmp_path / f"h{i}_seg.png"), cv2.resize(c.gt, (12, 9), interpolation=cv2.INTER_AREA))
    torch.manual_seed(0)
    result = evaluate_holdout(build_model("crm_mnv2"), str(tmp_path), scales=(0.5, 1.0), log=False)
    assert result["n"] == 2 and result["scales"] == [0.5, 1.0]
    samples = [load_sample(r) for r in list_samples(str(tmp_path))]
    ms = [image_metrics(s.coarse, s.gt) for s in samples]
    want = 100 * dataset_iou([m["intersection"] for m in ms], [m["union"] for m in ms])
    assert result["coarse"]["iou"] == pytest.approx(want)
    assert result["coarse"]["mba"] == pytest.approx(100 * np.mean([m["mba"] for m in ms]))
    assert 0 <= result["refined"]["iou"] <= 100 and 0 <= result["refined"]["mba"] <= 100
    table = format_table(result)
    assert "| refined |" in table and "| gain |" in table
