"""Tests pinning the metric definitions of DESIGN.md §3 (golden values, hand-computed cases, properties)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import metrics as M

GOLDEN = Path(__file__).parent / "data" / "golden_metrics"


# ---------------------------------------------------------------------------------------------------------
# plain whole-image versions of the definitions, to check the optimised paths against


def plain_mba(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """mBA written directly from its definition: whole-image morphological gradient per radius."""
    h, w = gt.shape
    g, p = gt.astype(np.uint8), pred.astype(np.uint8)
    accs = []
    for r in M.mba_radii(h, w):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        band = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, kernel) > 0
        n = int(band.sum())
        if n == 0:
            return None
        accs.append(int((g[band] == p[band]).sum()) / n)
    return sum(accs) / len(accs)


def plain_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Boundary of the official API: pad by one zero pixel, erode d times with a 3x3 square, subtract."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask.astype(np.uint8) - eroded > 0


def plain_biou(pred: np.ndarray, gt: np.ndarray) -> float | None:
    d = M.biou_dilation(*gt.shape)
    bp, bg = plain_boundary(pred, d), plain_boundary(gt, d)
    union = int((bp | bg).sum())
    return None if union == 0 else int((bp & bg).sum()) / union


def blob(rng: np.random.Generator, h: int, w: int, cells: int = 6, thresh: float = 0.5) -> np.ndarray:
    low = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) > thresh


# ---------------------------------------------------------------------------------------------------------
# golden values from CascadePSP's own evaluation code


def _golden_cases() -> list[dict]:
    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="module")
def golden_masks() -> np.lib.npyio.NpzFile:
    return np.load(GOLDEN / "masks_packed.npz")


def _unpack(z, name: str, h: int, w: int) -> np.ndarray:
    return np.unpackbits(z[name])[: h * w].reshape(h, w).astype(bool)


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["name"])
def test_golden(case: dict, golden_masks) -> None:
    h, w = case["height"], case["width"]
    gt = _unpack(golden_masks, case["name"] + "_gt", h, w)
    pred = _unpack(golden_masks, case["name"] + "_pred", h, w)
    got = M.image_metrics(pred, gt)
    assert got["intersection"] == case["intersection"]
    assert got["union"] == case["union"]
    assert got["iou"] == pytest.approx(case["iou"], abs=1e-12)
    assert abs(got["mba"] - case["mba"]) <= 1e-9
    assert got["null_reason"] is None
    # the same numbers from 8-bit {0, 255} masks, as read from PNG files
    assert M.iou_counts(pred.astype(np.uint8) * 255, gt.astype(np.uint8) * 255) == (
        case["intersection"],
        case["union"],
    )


def test_golden_small_cases_match_plain_biou(golden_masks) -> None:
    for case in _golden_cases():
        h, w = case["height"], case["width"]
        if h * w > 2_000_000:
            continue
        gt = _unpack(golden_masks, case["name"] + "_gt", h, w)
        pred = _unpack(golden_masks, case["name"] + "_pred", h, w)
        assert M.boundary_iou(pred, gt) == plain_biou(pred, gt)


# ---------------------------------------------------------------------------------------------------------
# hand-computed cases


def test_square_shifted_by_one_pixel() -> None:
    # 100x100 image: max_r = 200/300 < 1, so all five radii are 1 (a 3x3 ellipse = the 4-neighbour cross).
    gt = np.zeros((100, 100), bool)
    gt[40:60, 40:60] = True  # 20x20 square, columns 40..59
    pred = np.zeros_like(gt)
    pred[40:60, 41:61] = True  # shifted right by one: columns 41..60
    assert M.mba_radii(100, 100) == [1, 1, 1, 1, 1]
    # IoU: intersection 20 rows x 19 cols = 380, union 20 x 21 = 420.
    assert M.iou_counts(pred, gt) == (380, 420)
    # Band (cross kernel): outer ring without corners 4*20 = 80 + inner ring 4*20 - 4 = 76 -> 156 pixels.
    # Wrong in the band: column 40 (gt 1, pred 0) 20 px on the inner ring, column 60 (gt 0, pred 1) 20 px
    # on the outer ring -> 40 wrong, 116 right: mBA = 116/156.
    assert M.mba(pred, gt) == pytest.approx(116 / 156, abs=1e-15)
    # Boundary IoU: d = round(0.02 * sqrt(2) * 100) = round(2.83) = 3; boundary = square minus its
    # erosion by a 7x7 square = 20x20 minus the 14x14 core = 204 px for each mask.
    # Both squares overlap in rows 40..59, cols 41..59 (380 px); the union of the two cores
    # (rows 43..56, cols 43..57, 14x15 = 210 px) lies inside that overlap, so the boundaries share
    # 380 - 210 = 170 px and their union is 204 + 204 - 170 = 238: BIoU = 170/238 = 5/7.
    assert M.biou_dilation(100, 100) == 3
    assert M.boundary_iou(pred, gt) == pytest.approx(5 / 7, abs=1e-15)
    got = M.image_metrics(pred, gt)
    assert got["iou"] == pytest.approx(380 / 420, abs=1e-15)
    assert got["null_reason"] is None


def test_thin_line() -> None:
    # a one-pixel horizontal line: row 50, columns 20..79 (60 px) in a 100x100 image (radius 1 only)
    gt = np.zeros((100, 100), bool)
    gt[50, 20:80] = True
    # Band: the cross erodes the line away, so band = dilation = 60 line px + rows 49 and 51 over
    # columns 20..79 (120 px) + the two end pixels (50, 19) and (50, 80) = 182 px.
    empty = np.zeros_like(gt)
    # empty prediction: the 60 line pixels are wrong, 122 right
    assert M.mba(empty, gt) == pytest.approx(122 / 182, abs=1e-15)
    assert M.iou_counts(empty, gt) == (0, 60)
    # the boundary of a 1-px line is the line itself (erosion removes it all); empty pred -> 0/60
    assert M.boundary_iou(empty, gt) == 0.0
    # the line moved down one row: 60 px of row 50 and 60 px of row 51 are wrong, 62 right
    down = np.roll(gt, 1, axis=0)
    assert M.mba(down, gt) == pytest.approx(62 / 182, abs=1e-15)
    assert M.iou_counts(down, gt) == (0, 120)
    assert M.boundary_iou(down, gt) == 0.0
    assert M.mba(gt, gt) == 1.0


def test_empty_and_full_masks() -> None:
    empty = np.zeros((50, 70), np.uint8)
    full = np.full((50, 70), 255, np.uint8)
    some = empty.copy()
    some[10:20, 10:30] = 255

    both_empty = M.image_metrics(empty, empty)
    assert both_empty == {
        "iou": None,
        "mba": None,
        "biou": None,
        "intersection": 0,
        "union": 0,
        "null_reason": "iou:empty_union; mba:empty_band; biou:empty_union",
    }
    gt_empty = M.image_metrics(some, empty)
    assert (gt_empty["iou"], gt_empty["mba"], gt_empty["biou"]) == (0.0, None, 0.0)
    assert gt_empty["null_reason"] == "mba:empty_band"
    pred_empty = M.image_metrics(empty, some)
    assert (pred_empty["iou"], pred_empty["biou"]) == (0.0, 0.0)
    assert pred_empty["mba"] == pytest.approx(plain_mba(np.zeros((50, 70), bool), some > 128))
    gt_full = M.image_metrics(full, full)
    assert (gt_full["iou"], gt_full["mba"], gt_full["biou"]) == (1.0, None, 1.0)
    assert gt_full["null_reason"] == "mba:empty_band"
    assert M.image_metrics(empty, full)["mba"] is None
    for value in (*both_empty.values(), *gt_empty.values(), *gt_full.values()):
        assert not (isinstance(value, float) and math.isnan(value))


def test_binarize_threshold() -> None:
    u8 = np.array([[0, 128, 129, 255]], np.uint8)
    assert M.binarize(u8).tolist() == [[False, False, True, True]]
    # float probabilities: p * 255 > 128
    f = np.array([[0.0, 0.5, 128 / 255 - 1e-6, 128.01 / 255, 1.0]], np.float64)
    assert M.binarize(f).tolist() == [[False, False, False, True, True]]
    assert M.binarize(f.astype(np.float32)).tolist() == [[False, False, False, True, True]]
    with pytest.raises(ValueError, match="dtype"):
        M.binarize(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        M.binarize(np.zeros((2, 2, 3), np.uint8))


def test_different_sizes_bilinear() -> None:
    # 2x2 prediction [[1, 0], [0, 0]] resized to 4x4 with cv2 INTER_LINEAR (half-pixel centres):
    # output x maps to 0.5 * x - 0.25 -> weights of the first source pixel along each axis are
    # [1, 0.75, 0.25, 0] (clamped at the edges), so the 4x4 map is the outer product:
    #   1      .75     .25    0
    #   .75    .5625   .1875  0
    #   .25    .1875   .0625  0
    #   0      0       0      0
    # p * 255 > 128 <=> p > 0.502: the top-left 2x2 block is foreground.
    soft = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    gt = np.zeros((4, 4), np.uint8)
    gt[0, 0] = gt[0, 1] = gt[1, 0] = gt[2, 0] = 255  # 4 px; 3 shared with the prediction's 4 -> 3 / 5
    assert M.binarize(M.resize_to(soft, (4, 4))).tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    assert M.iou_counts(soft, gt) == (3, 5)
    # 8-bit prediction: 0.5625 * 255 = 143 > 128 and 0.25 * 255 = 64, the same pixels
    assert M.iou_counts(np.array([[255, 0], [0, 0]], np.uint8), gt) == (3, 5)
    # bool prediction: resized as {0, 255}
    assert M.iou_counts(soft > 0.5, gt) == (3, 5)
    got = M.image_metrics(soft, gt)
    assert (got["intersection"], got["union"]) == (3, 5)
    # downsizing works too: a 2x-upsampled square maps back onto itself
    big = np.zeros((200, 300), np.float32)
    big[40:120, 60:200] = 1.0
    small_gt = np.zeros((100, 150), bool)
    small_gt[20:60, 30:100] = True
    assert M.iou_counts(big, small_gt) == (2800, 2800)


def test_change_metrics() -> None:
    coarse = np.zeros((10, 10), np.uint8)
    coarse[2:6, 2:6] = 255  # 16 px
    refined = np.zeros((10, 10), np.float32)
    refined[2:6, 3:7] = 0.9  # 16 px, shifted by one column: 12 shared, 20 in the union
    got = M.change_metrics(coarse, refined)
    assert got == {"change_iou": 12 / 20, "changed_fraction": 8 / 100, "null_reason": None}
    none = M.change_metrics(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.float32))
    assert none == {"change_iou": None, "changed_fraction": 0.0, "null_reason": "change_iou:empty_union"}
    # a coarse mask of another size is resized bilinearly to the refined mask's size
    small = np.zeros((5, 5), np.uint8)
    small[1:3, 1:3] = 255
    up = np.zeros((10, 10), np.uint8)
    up[2:6, 2:6] = 255
    assert M.change_metrics(small, up)["change_iou"] == 1.0


# ---------------------------------------------------------------------------------------------------------
# properties


def test_mba_radii() -> None:
    assert M.mba_radii(1600, 2048) == [1, 3, 5, 7, 9]
    assert M.mba_radii(3600, 5000) == [1, 6, 12, 17, 23]
    assert M.mba_radii(10, 10) == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("seed", range(3))
def test_identical_masks_score_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = blob(rng, 300, 420)
    got = M.image_metrics(mask, mask)
    assert (got["iou"], got["mba"], got["biou"]) == (1.0, 1.0, 1.0)
    assert got["intersection"] == got["union"] == int(mask.sum())


@pytest.mark.parametrize(
    "shape, cells, strip, max_lut_radius",
    [
        ((1000, 800), 6, None, 120),  # radii 1, 2, 3, 4, 5
        ((640, 1100), 12, None, 120),
        ((901, 1303), 30, None, 120),  # odd sizes, a busy boundary
        ((700, 900), 8, 7, 120),  # strips thinner than the largest radius
        ((700, 900), 8, 1, 120),
        ((1200, 1500), 5, 10_000, 120),  # one strip
        ((901, 1303), 30, None, 0),  # the OpenCV path used for radii too large for the lookup tables
        ((700, 900), 8, 7, 0),
    ],
)
def test_mba_matches_whole_image_definition(
    shape: tuple[int, int], cells: int, strip: int | None, max_lut_radius: int
) -> None:
    rng = np.random.default_rng(cells)
    h, w = shape
    gt = blob(rng, h, w, cells)
    pred = gt ^ (blob(rng, h, w, cells * 4, 0.8) & (rng.random((h, w)) < 0.5))
    pred[:, : w // 7] = True  # touches the image border
    gt[0, :] = True
    radii = M.mba_radii(h, w)
    band, good = M._mba_band_counts(pred, gt, radii, strip_height=strip, max_lut_radius=max_lut_radius)
    g, p = gt.view(np.uint8), pred.view(np.uint8)
    for r, n, k in zip(radii, band, good):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        ref = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, kernel) > 0
        assert n == int(ref.sum())
        assert k == int((g[ref] == p[ref]).sum())
    assert M.mba(pred, gt) == plain_mba(pred, gt)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 3), (13, 9)])
def test_tiny_images_match_definitions(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        gt = rng.random(shape) < 0.5
        pred = rng.random(shape) < 0.5
        assert M.mba(pred, gt) == plain_mba(pred, gt)
        assert M.boundary_iou(pred, gt) == plain_biou(pred, gt)


def test_row_distance() -> None:
    rng = np.random.default_rng(5)
    g = (rng.random((40, 90)) < 0.1).astype(np.uint8)
    g[5] = 0  # a constant row: no other class anywhere -> the cap
    g[6, 45:] = 1
    for cap in (1, 2, 5, 40):
        got = M._row_distance(g, cap)
        for y in range(g.shape[0]):
            for x in range(g.shape[1]):
                other = np.flatnonzero(g[y] != g[y, x])
                want = min(cap, int(np.abs(other - x).min())) if other.size else cap
                assert got[y, x] == want, (cap, y, x)


@pytest.mark.parametrize("shape", [(97, 131), (300, 200), (640, 480)])
def test_boundary_iou_matches_official_definition(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    h, w = shape
    gt = blob(rng, h, w, 7)
    pred = blob(rng, h, w, 7)
    gt[:, :3] = True
    assert M.boundary_iou(pred, gt) == plain_biou(pred, gt)
    for ratio in (0.001, 0.05):
        d = M.biou_dilation(h, w, ratio)
        assert np.array_equal(M._boundary(gt, d), plain_boundary(gt, d))


def test_dataset_iou_and_aggregate() -> None:
    assert M.dataset_iou([5, 0, 10], [10, 0, 10]) == 15 / 20  # not the mean of 0.5 and 1.0 (= 0.75)
    assert M.dataset_iou([1, 3], [4, 4]) == 0.5
    assert M.dataset_iou([], []) is None
    assert M.dataset_iou([0], [0]) is None
    with pytest.raises(ValueError, match="unions"):
        M.dataset_iou([1], [1, 2])
    with pytest.raises(ValueError, match="image 0"):
        M.dataset_iou([3], [2])
    rows = [
        {"iou": 0.5, "mba": 0.8, "biou": 0.4, "intersection": 5, "union": 10, "null_reason": None},
        {"iou": 1.0, "mba": None, "biou": 1.0, "intersection": 100, "union": 100, "null_reason": "mba:x"},
        {"iou": None, "mba": None, "biou": None, "intersection": 0, "union": 0, "null_reason": "..."},
        {"key": "broken", "error": "decode"},
    ]
    agg = M.aggregate_metrics(rows)
    assert agg == {
        "n_images": 3,
        "n_missing": 1,
        "dataset_iou": 105 / 110,
        "mean_mba": 0.8,
        "mean_biou": 0.7,
        "mean_image_iou": 0.75,
        "n_iou_null": 1,
        "n_mba_null": 2,
        "n_biou_null": 1,
    }
    assert M.aggregate_metrics([])["dataset_iou"] is None
