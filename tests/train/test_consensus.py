"""Consensus objects from several human segmentations, and the BSDS500 reader/writer built on them."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from jobs.make_bsds_data import frame_share, read_segmentations
from jobs.make_bsds_data import main as bsds_main
from pipeline.metrics import mba
from pipeline.train.consensus import best_match, best_match_iou, consensus_objects, other_drawings

H, W = 60, 80


def _annotators() -> list[np.ndarray]:
    """Three annotators: all draw the object (rows 10-39, cols 20-59) within a pixel of each other;
    annotator 0 alone splits the background in two; annotator 2 adds a 2% speck region."""
    segs = []
    for shift in (0, 1, -1):
        s = np.zeros((H, W), np.uint16)
        s[10 + shift:40 + shift, 20:60] = 1
        segs.append(s)
    segs[0][:, :10][segs[0][:, :10] == 0] = 2  # a 600-px strip (12.5%) only annotator 0 draws
    segs[2][50:55, 2:12] = 3  # 50 px: under min_area
    return segs


def test_best_match_iou_is_the_best_single_region():
    labels = np.zeros((4, 4), np.int32)
    labels[:, 2:] = 7
    mask = np.zeros((4, 4), bool)
    mask[:, 1:] = True  # 12 px: 8 in region 7 (IoU 8/12), 4 in region 0 (IoU 4/16)
    assert best_match_iou(mask, labels) == pytest.approx(8 / 12)
    assert best_match_iou(labels == 7, labels) == 1.0
    iou, region = best_match(mask, labels - 3)  # negative labels too
    assert iou == pytest.approx(8 / 12) and np.array_equal(region, labels == 7)


def test_consensus_keeps_each_agreed_object_once():
    objs = consensus_objects(_annotators(), min_iou=0.9, min_agreeing=2)
    areas = sorted(round(float(o.mask.mean()), 4) for o in objs)
    # the object (1200 px = 25%) and the background (~75%, over max_area 0.6) -> only the object;
    # annotator 0's strip has no second drawing; the speck is too small
    assert areas == [0.25]
    (obj,) = objs
    assert obj.annotator == 0  # both others are 1 px off it; each of them is 2 px off the other
    assert obj.agreeing == 2 and obj.agreement == pytest.approx(29 * 40 / (31 * 40))
    assert obj.mask[10:40, 20:60].all() and obj.mask.sum() == 1200
    # the other two drawings, each a pixel off; none when the bar is higher than their IoU
    segs = _annotators()
    drawn = other_drawings(obj, segs)
    assert [np.array_equal(d, s == 1) for d, s in zip(drawn, segs[1:])] == [True, True]
    assert other_drawings(obj, segs, min_iou=0.95) == []


def test_consensus_thresholds_and_limits():
    segs = _annotators()
    assert consensus_objects(segs, min_iou=0.95) == []  # 1-px disagreement is IoU 0.935
    strip = consensus_objects([segs[0], segs[0]], min_agreeing=2, max_area=0.9)
    assert len(strip) == 2  # with two identical drawings one agreeing annotator suffices
    assert len(consensus_objects([segs[0], segs[0]], max_area=0.9, max_objects=1)) == 1
    assert consensus_objects([segs[0]]) == []  # nobody to agree with
    scattered = np.zeros((H, W), np.uint16)
    scattered[:, ::4] = 1  # 25% of the image, but in 20 strips
    assert consensus_objects([scattered, scattered.copy()]) == []
    with pytest.raises(ValueError, match="differ in shape"):
        consensus_objects([segs[0], segs[0][:-1]])


def _bsds_tree(root, segs):
    import scipy.io

    for d in ("images/test", "groundTruth/test"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images/test/1234.jpg"), image)
    cells = np.empty((1, len(segs)), dtype=object)
    for i, s in enumerate(segs):
        cells[0, i] = {"Segmentation": s, "Boundaries": np.zeros_like(s, dtype=bool)}
    scipy.io.savemat(str(root / "groundTruth/test/1234.mat"), {"groundTruth": cells})


def test_make_bsds_data_writes_the_prefix_layout(tmp_path, capsys):
    segs = _annotators()
    _bsds_tree(tmp_path / "bsds", segs)
    assert [np.array_equal(a, b) for a, b in zip(read_segmentations(
        str(tmp_path / "bsds/groundTruth/test/1234.mat")), segs)] == [True] * 3
    out = tmp_path / "out"
    assert bsds_main(["--bsds", str(tmp_path / "bsds"), "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 objects from 1 photos" in printed and "other annotators' mBA against them: mean" in printed
    key = "bsds_test_1234_0"
    assert (out / f"{key}_im.jpg").read_bytes() == (tmp_path / "bsds/images/test/1234.jpg").read_bytes()
    gt = cv2.imread(str(out / f"{key}_gt.png"), cv2.IMREAD_UNCHANGED)
    assert gt.shape == (H, W) and set(np.unique(gt)) == {0, 255} and (gt == 255).sum() == 1200
    seg = cv2.imread(str(out / f"{key}_seg.png"), cv2.IMREAD_UNCHANGED)
    assert seg.shape == (H, W) and (seg == 255).mean() == pytest.approx(0.25, abs=0.03)
    (rec,) = json.loads((out / "objects.json").read_text())
    assert rec["photo"] == "1234" and rec["annotators"] == 3 and rec["agreeing"] == 2 and rec["area"] == 0.25
    assert rec["frame"] == 0.0
    # the judge's floor: the other annotators' drawings (1 px off) scored against the object
    want = 100 * np.mean([mba(s == 1, gt > 0) for s in segs[1:]])
    assert rec["human_mba"] == pytest.approx(want, abs=0.005) and 0 < want < 100
    # --max-frame drops regions that cover much of the border: make the object touch the left edge
    segs = [np.where(s == 1, 1, 0).astype(np.uint16) for s in _annotators()]
    for s in segs:
        s[:, :20][s[:, 20:21].repeat(20, axis=1) == 1] = 1  # extend the rows of the object leftwards
    _bsds_tree(tmp_path / "bsds2", segs)
    two = ["--bsds", str(tmp_path / "bsds2"), "--split", "test"]
    assert bsds_main([*two, "--out", str(tmp_path / "o2")]) == 0
    (rec,) = json.loads((tmp_path / "o2" / "objects.json").read_text())
    assert rec["frame"] == pytest.approx(30 / (2 * W + 2 * (H - 2)), abs=1e-4)
    assert bsds_main([*two, "--out", str(tmp_path / "o3"), "--max-frame", "0.1"]) == 0
    assert json.loads((tmp_path / "o3" / "objects.json").read_text()) == []


def test_frame_share_counts_each_border_pixel_once():
    m = np.zeros((4, 5), bool)
    assert frame_share(m) == 0.0 and frame_share(~m) == 1.0
    m[0, :] = True  # the top row: 5 of the 14 ring pixels
    assert frame_share(m) == pytest.approx(5 / 14)


def test_make_bsds_data_rejects_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no groundTruth/test"):
        bsds_main(["--bsds", str(tmp_path), "--split", "test", "--out", str(tmp_path / "o")])
    bad = tmp_path / "x.mat"
    import scipy.io

    scipy.io.savemat(str(bad), {"other": np.zeros(3)})
    with pytest.raises(ValueError, match="x.mat: not a BSDS500 groundTruth file"):
        read_segmentations(str(bad))
