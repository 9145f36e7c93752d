"""SAM-SR-v1 merge: coverage, the sparsity gate and the deformation gate."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sam.merge import GATE_DEFORMATION, GATE_SPARSITY, bbox_fill, merge_v1


def _square(size, y0, y1, x0, x1, value=True):
    m = np.zeros(size, bool)
    m[y0:y1, x0:x1] = value
    return m


def test_merges_covered_masks_and_resizes_back():
    coarse = _square((200, 200), 40, 160, 40, 160).astype(np.uint8) * 255  # full size
    masks = np.stack([
        _square((100, 100), 22, 78, 22, 78),  # inside the coarse square (working size)
        _square((100, 100), 0, 10, 0, 10),  # outside
        _square((100, 100), 50, 100, 50, 100),  # a quarter of it inside: not covered enough
    ])
    out, gate = merge_v1(coarse, masks)
    assert gate is None
    assert out.shape == (200, 200) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 255}
    expected = np.zeros((200, 200), np.uint8)
    expected[44:156, 44:156] = 255  # mask 0 scaled x2
    assert np.array_equal(out, expected)


def test_union_of_several_masks():
    coarse = _square((100, 100), 10, 90, 10, 90).astype(np.uint8) * 255
    masks = np.stack([_square((100, 100), 10, 50, 10, 90), _square((100, 100), 50, 88, 10, 90)])
    out, gate = merge_v1(coarse, masks)
    assert gate is None
    assert np.array_equal(out > 128, masks.any(0))


def test_sparsity_gate_on_thin_structure():
    coarse = np.zeros((100, 100), np.uint8)
    idx = np.arange(5, 95)
    coarse[idx, idx] = 255  # a diagonal line: fills ~1 % of its box
    coarse[idx, np.minimum(idx + 1, 99)] = 255
    masks = np.stack([_square((50, 50), 0, 50, 0, 50)])
    out, gate = merge_v1(coarse, masks)
    assert gate == GATE_SPARSITY
    assert out is coarse
    assert bbox_fill(coarse > 128) < 0.05
    _, gate = merge_v1(np.zeros((100, 100), np.uint8), masks)  # empty coarse: sparse
    assert gate == GATE_SPARSITY
    assert bbox_fill(np.ones((4, 4), bool)) == 1.0 and bbox_fill(np.zeros((4, 4), bool)) == 0.0


def test_deformation_gate():
    coarse = _square((100, 100), 10, 90, 10, 90).astype(np.uint8) * 255
    small = np.stack([_square((100, 100), 40, 60, 40, 60)])  # covered, but IoU 400/6400
    out, gate = merge_v1(coarse, small)
    assert gate == GATE_DEFORMATION and out is coarse
    out, gate = merge_v1(coarse, small, deform_iou_thresh=0.0)
    assert gate is None and int((out > 128).sum()) == 400
    _, gate = merge_v1(coarse, np.zeros((0, 100, 100), bool))  # no SAM masks at all
    assert gate == GATE_DEFORMATION


def test_cover_threshold():
    coarse = _square((100, 100), 0, 100, 0, 50).astype(np.uint8) * 255
    masks = np.stack([_square((100, 100), 0, 100, 0, 60)])  # 50/60 = 0.83 inside
    assert merge_v1(coarse, masks, cover_thresh=0.8, deform_iou_thresh=0.5)[1] is None
    assert merge_v1(coarse, masks, cover_thresh=0.9, deform_iou_thresh=0.5)[1] == GATE_DEFORMATION


def test_bad_inputs():
    with pytest.raises(ValueError, match="coarse"):
        merge_v1(np.zeros((4, 4), np.float32), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="masks"):
        merge_v1(np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="cover_thresh"):
        merge_v1(np.zeros((4, 4), np.uint8), np.zeros((1, 4, 4), bool), cover_thresh=2.0)
