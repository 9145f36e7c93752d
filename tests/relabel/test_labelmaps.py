"""Label-map re-labeling: class boxes and coarse masks, nearest upsampling, the merge rule, and
relabel_classes with an oracle and an identity refiner."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from pipeline.relabel.crops import CropRule, crop_box
from pipeline.relabel.labelmaps import (
    LabelMerger,
    class_box,
    class_coarse,
    classes_present,
    relabel_classes,
    upsample_labels,
)

# ---------------------------------------------------------------- classes, boxes, coarse masks


def test_classes_present():
    values = np.array([[0, 3, 255], [7, 3, 0]], np.uint8)
    assert classes_present(values, 255) == [0, 3, 7]
    assert classes_present(values, None) == [0, 3, 7, 255]
    assert classes_present(values, 0) == [3, 7, 255]
    assert classes_present(np.array([[5, 5]], np.int32), 255) == [5]
    assert all(type(c) is int for c in classes_present(values, 255))


def _random_map(rng, h, w, k=4):
    """Blobby random labels: a low-res random field upsampled, so boxes are partial."""
    seed = rng.integers(0, k, (max(2, h // 4), max(2, w // 4))).astype(np.uint8)
    return cv2.resize(seed, (w, h), interpolation=cv2.INTER_NEAREST)


SIZES = [  # (h, w, H, W): scale 1, 4, 8 and non-integer scales, up and down
    (40, 30, 40, 30),
    (24, 32, 96, 128),
    (24, 32, 192, 256),
    (13, 17, 50, 61),
    (37, 23, 384, 512),
    (60, 50, 41, 37),
]


@pytest.mark.parametrize("h, w, H, W", SIZES)
def test_class_box_contains_every_nonzero_upsampled_pixel(h, w, H, W):
    rng = np.random.default_rng(h * 1000 + W)
    for trial in range(6):
        values = _random_map(rng, h, w)
        if trial == 0:  # a single pixel in a corner and one at the opposite border
            values[:] = 0
            values[0, 0] = 1
            values[h - 1, w // 2] = 2
        for cls in range(4):
            up = cv2.resize(((values == cls) * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)
            box = class_box(values, cls, H, W)
            if not (values == cls).any():
                assert box is None
                continue
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            inside = np.zeros((H, W), bool)
            inside[y0:y1, x0:x1] = True
            assert not (up > 0)[~inside].any(), (cls, box)
            # and not loose: within two source steps of the non-zero pixels
            ys, xs = np.nonzero(up)
            gx, gy = -(-W // w), -(-H // h)
            assert x0 >= xs.min() - 2 * gx and x1 <= xs.max() + 1 + 2 * gx
            assert y0 >= ys.min() - 2 * gy and y1 <= ys.max() + 1 + 2 * gy


def test_class_box_numbers():
    values = np.zeros((6, 8), np.uint8)
    values[2:4, 3:5] = 1  # low-res box (3, 2, 5, 4)
    # scale 4: (12, 8, 20, 16) grown by 4 -> (8, 4, 24, 20)
    assert class_box(values, 1, 24, 32) == (8, 4, 24, 20)
    # scale 1: grown by one pixel
    assert class_box(values, 1, 6, 8) == (2, 1, 6, 5)
    assert class_box(values, 0, 24, 32) == (0, 0, 32, 24)  # clipped
    assert class_box(values, 9, 24, 32) is None


@pytest.mark.parametrize("h, w, H, W", SIZES)
def test_class_coarse_matches_full_resize(h, w, H, W):
    rng = np.random.default_rng(7 + h)
    values = _random_map(rng, h, w)
    windows = [(0, 0, W, H), (W // 3, H // 4, W - 1, H // 2 + 3), (W - 5, H - 7, W, H), (0, 2, 7, H)]
    for cls in classes_present(values, None):
        full = cv2.resize(((values == cls) * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)
        for x0, y0, x1, y1 in windows:
            got = class_coarse(values, cls, H, W, (x0, y0, x1, y1))
            assert got.dtype == np.uint8 and got.shape == (y1 - y0, x1 - x0)
            diff = np.abs(got.astype(int) - full[y0:y1, x0:x1].astype(int))
            assert diff.max() <= 1, (cls, (x0, y0, x1, y1), diff.max())


# ---------------------------------------------------------------- nearest upsampling


def _nearest_reference(values: np.ndarray, H: int, W: int) -> np.ndarray:
    """Independent reference: for each output pixel centre, the source pixel whose centre is
    nearest in source coordinates (exact fractions; a tie takes the later pixel)."""
    h, w = values.shape

    def pick(n_src, n_dst, i):
        centre = (i + Fraction(1, 2)) * Fraction(n_src, n_dst)  # in source units, pixel j spans [j, j+1)
        dists = [(abs(centre - (j + Fraction(1, 2))), -j) for j in range(n_src)]
        return -min(dists)[1]

    rows = [pick(h, H, i) for i in range(H)]
    cols = [pick(w, W, i) for i in range(W)]
    return values[np.array(rows)[:, None], np.array(cols)[None, :]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("h, w, H, W", [(6, 8, 48, 64), (5, 7, 19, 13), (10, 10, 33, 27), (9, 12, 4, 5)])
def test_upsample_labels_nearest_half_pixel(dtype, h, w, H, W):
    rng = np.random.default_rng(h * W)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, int(info.max) + 1, (h, w), dtype=np.int64).astype(dtype)
    out = upsample_labels(values, H, W)
    assert out.dtype == dtype and out.shape == (H, W)
    np.testing.assert_array_equal(out, _nearest_reference(values, H, W))
    if H % h == 0 and W % w == 0:  # integer scale: pixel replication, as cv2.INTER_NEAREST
        rep = np.repeat(np.repeat(values, H // h, axis=0), W // w, axis=1)
        np.testing.assert_array_equal(out, rep)
        if dtype != np.int32:
            np.testing.assert_array_equal(out, cv2.resize(values, (W, H), interpolation=cv2.INTER_NEAREST))


def test_upsample_labels_agrees_with_cv2_nearest_exact_except_at_ties():
    h, w, H, W = 10, 10, 33, 27
    values = np.arange(100, dtype=np.uint8).reshape(h, w)
    out = upsample_labels(values, H, W)
    ref = cv2.resize(values, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)
    # output column X samples source x = (X + 0.5) * w / W; a tie is x exactly on a pixel edge
    tie_cols = [X for X in range(W) if ((2 * X + 1) * w) % (2 * W) == 0]
    tie_rows = [Y for Y in range(H) if ((2 * Y + 1) * h) % (2 * H) == 0]
    assert tie_cols == [13] and tie_rows == [16]  # x = 5.0 and y = 5.0: halfway between 4 and 5
    mask = np.ones((H, W), bool)
    mask[:, tie_cols] = False
    mask[tie_rows, :] = False
    np.testing.assert_array_equal(out[mask], ref[mask])
    assert (out[16] // 10 == 5).all() and (out[:, 13] % 10 == 5).all()  # a tie takes the later pixel


# ---------------------------------------------------------------- merging


def _full(shape, value):
    return np.full(shape, value, np.float32)


def test_merger_ignore_stays_and_base_is_not_modified():
    base = np.array([[0, 0, 255], [1, 255, 1]], np.uint8)
    keep = base.copy()
    m = LabelMerger(base, 255)
    m.add(7, (0, 0, 3, 2), _full((2, 3), 1.0))
    np.testing.assert_array_equal(m.result(), [[7, 7, 255], [7, 255, 7]])
    np.testing.assert_array_equal(base, keep)
    with pytest.raises(ValueError, match="ignore"):
        m.add(255, (0, 0, 3, 2), _full((2, 3), 1.0))
    # without an ignore id, 255 is an ordinary label
    m = LabelMerger(base, None)
    m.add(7, (0, 0, 3, 2), _full((2, 3), 1.0))
    np.testing.assert_array_equal(m.result(), np.full((2, 3), 7))


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_merger_highest_probability_wins(order):
    base = np.zeros((2, 4), np.uint8)
    probs = {
        1: np.array([[0.6, 0.9, 0.55, 0.2], [0.5, 0.0, 1.0, 0.7]], np.float32),
        2: np.array([[0.8, 0.7, 0.54, 0.3], [0.1, 0.6, 0.99, 0.49]], np.float32),
    }
    m = LabelMerger(base, 255)
    for c in order:
        m.add(c, (0, 0, 4, 2), probs[c])
    np.testing.assert_array_equal(m.result(), [[2, 1, 1, 0], [1, 2, 1, 1]])


def test_merger_tie_goes_to_the_class_added_first():
    base = np.zeros((1, 3), np.uint8)
    p = np.array([[0.7, 0.5, 0.3]], np.float32)
    m = LabelMerger(base, None)
    m.add(4, (0, 0, 3, 1), p)
    m.add(9, (0, 0, 3, 1), p)
    np.testing.assert_array_equal(m.result(), [[4, 4, 0]])
    m = LabelMerger(base, None)
    m.add(9, (0, 0, 3, 1), p)
    m.add(4, (0, 0, 3, 1), p)
    np.testing.assert_array_equal(m.result(), [[9, 9, 0]])


def test_merger_unclaimed_keeps_base():
    base = np.array([[3, 3, 5, 5]], np.uint16)
    m = LabelMerger(base, 0)
    m.add(3, (0, 0, 4, 1), np.array([[0.2, 0.4999, 0.1, 0.0]], np.float32))  # its own pixels, unclaimed
    m.add(5, (0, 0, 4, 1), np.array([[0.1, 0.6, 0.3, np.nan]], np.float32))
    m.add(1000, (0, 0, 2, 1), np.array([[0.45, 0.9]], np.float32))
    out = m.result()
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[3, 1000, 5, 5]])


def test_merger_window_at_the_border_and_bad_windows():
    base = np.zeros((5, 6), np.int32)
    m = LabelMerger(base, -1)
    m.add(2, (4, 2, 6, 5), np.array([[1, 0], [1, 1], [0.5, 1]], np.float32))
    expected = np.zeros((5, 6), np.int32)
    expected[2, 4] = expected[3, 4] = expected[3, 5] = expected[4, 4] = expected[4, 5] = 2
    np.testing.assert_array_equal(m.result(), expected)
    with pytest.raises(ValueError, match="outside"):
        m.add(3, (4, 2, 7, 5), np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="outside"):
        m.add(3, (2, 2, 2, 5), np.ones((3, 0), np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.add(3, (4, 2, 6, 5), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="fit"):
        LabelMerger(np.zeros((2, 2), np.uint8), None).add(300, (0, 0, 2, 2), np.ones((2, 2), np.float32))


# ---------------------------------------------------------------- relabel_classes

IGN = 255
H, W = 384, 512


def _ground_truth() -> np.ndarray:
    """(384, 512) uint8: background 0, a disk 1, a rectangle 2, a disk 3 over both, ignore 255."""
    yy, xx = np.mgrid[:H, :W]
    gt = np.zeros((H, W), np.uint8)
    gt[(yy - 150) ** 2 + (xx - 170) ** 2 < 90**2] = 1
    gt[60:300, 300:470] = 2
    gt[(yy - 260) ** 2 + (xx - 290) ** 2 < 55**2] = 3
    gt[340:372, 20:200] = IGN  # an ignore band
    gt[(yy - 40) ** 2 + (xx - 60) ** 2 < 20**2] = IGN  # and an ignore blob
    return gt


def test_relabel_with_an_oracle_refiner_recovers_the_ground_truth():
    gt = _ground_truth()
    coarse = cv2.resize(gt, (W // 8, H // 8), interpolation=cv2.INTER_NEAREST)
    calls = []

    def oracle(cls, window, coarse_mask):
        x0, y0, x1, y1 = window
        np.testing.assert_array_equal(coarse_mask, class_coarse(coarse, cls, H, W, window))
        calls.append(cls)
        return (gt[y0:y1, x0:x1] == cls).astype(np.float32)

    merged, records = relabel_classes(coarse, IGN, H, W, oracle)
    assert calls == [0, 1, 2, 3]
    assert merged.dtype == np.uint8 and merged.shape == (H, W)
    base = upsample_labels(coarse, H, W)
    # precondition of the claim: each class's window covers its true pixels (outside base ignore)
    for rec in records:
        x0, y0, x1, y1 = rec["window"]
        assert rec["window"] == crop_box(class_box(coarse, rec["class"], H, W), H, W, CropRule())
        outside = (gt == rec["class"]) & (base != IGN)
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
        assert rec["refined_pixels"] == int((gt[y0:y1, x0:x1] == rec["class"]).sum())
        coarse_mask = class_coarse(coarse, rec["class"], H, W, rec["window"])
        assert rec["coarse_pixels"] == int((coarse_mask > 128).sum())
    # ignore exactly where the upsampled base is ignore; elsewhere the truth, or the base
    # label where the truth is ignore (no class claims those pixels)
    np.testing.assert_array_equal(merged == IGN, base == IGN)
    expected = np.where(base == IGN, IGN, np.where(gt == IGN, base, gt))
    np.testing.assert_array_equal(merged, expected)
    assert (merged != base).sum() > 1000  # the refiner did change the coarse boundaries


def _identity_maps():
    gt = _ground_truth()
    scale8 = cv2.resize(gt, (W // 8, H // 8), interpolation=cv2.INTER_NEAREST)
    rng = np.random.default_rng(5)
    rand = rng.choice(np.array([0, 1, 2, 3, IGN], np.uint8), size=(41, 57), p=[0.3, 0.25, 0.2, 0.15, 0.1])
    return {"scale8": scale8, "non-integer": rand}


@pytest.mark.parametrize("name", ["scale8", "non-integer"])
def test_relabel_with_an_identity_refiner_is_the_bilinear_majority(name):
    """With prob = coarse / 255 (bilinear weights of each class), what the rule implies:
    the bilinear weights of all labels (ignore included) sum to 1, so at most one class can
    hold a strict majority; a pixel where a class has weight > 1/2 (a margin for the uint8
    coarse masks) gets that class, a pixel where every class has weight < 1/2 keeps the
    nearest label, base ignore stays ignore; and exactly, the dense form of the rule on the
    coarse masks the refiner was given."""
    values = _identity_maps()[name]
    given = {}

    def identity(cls, window, coarse_mask):
        given[cls] = (window, coarse_mask)
        return coarse_mask.astype(np.float32) / 255.0

    merged, records = relabel_classes(values, IGN, H, W, identity)
    base = upsample_labels(values, H, W)
    classes = classes_present(values, IGN)
    assert [r["class"] for r in records] == classes == [0, 1, 2, 3]

    # exact: dense (classes, H, W) probabilities, claims >= 0.5, first maximum wins
    prob = np.zeros((len(classes), H, W), np.float32)
    for i, cls in enumerate(classes):
        (x0, y0, x1, y1), c = given[cls]
        prob[i, y0:y1, x0:x1] = c.astype(np.float32) / 255.0
    claimed = prob >= 0.5
    best = np.argmax(np.where(claimed, prob, -1.0), axis=0)
    dense = np.where(claimed.any(axis=0), np.array(classes)[best], base)
    dense = np.where(base == IGN, IGN, dense)
    np.testing.assert_array_equal(merged, dense)

    # what can be proven from the float bilinear weights
    weights = np.stack([
        cv2.resize((values == c).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) for c in classes
    ])
    w_ign = cv2.resize((values == IGN).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(weights.sum(axis=0) + w_ign, 1.0, atol=1e-5)
    top, arg = weights.max(axis=0), np.array(classes)[weights.argmax(axis=0)]
    not_ign = base != IGN
    majority = (top > 0.5 + 2 / 255) & not_ign
    minority = (top < 0.5 - 2 / 255) & not_ign
    np.testing.assert_array_equal(merged[majority], arg[majority])
    np.testing.assert_array_equal(merged[minority], base[minority])
    np.testing.assert_array_equal(merged == IGN, base == IGN)
    assert majority.sum() > 0.5 * H * W
    if name == "non-integer":
        assert minority.sum() > 1000  # the fallback to the nearest label is exercised


def test_trust_fields_of_the_refiner_reach_each_class_record():
    from pipeline.refine.trust import Outcome

    values = _identity_maps()["scale8"]

    def refiner(cls, window, coarse_mask):
        return Outcome(coarse_mask.astype(np.float32) / 255.0,
                       {"trust_score": cls / 10, "accepted": cls % 2 == 0, "line_level": 0.5,
                        "accepted_share": 1.0 if cls % 2 == 0 else cls / 100})

    _, records = relabel_classes(values, IGN, H, W, refiner)
    assert [(r["class"], r["trust_score"], r["accepted"], r["accepted_share"]) for r in records] == [
        (c, c / 10, c % 2 == 0, 1.0 if c % 2 == 0 else c / 100) for c in classes_present(values, IGN)]
