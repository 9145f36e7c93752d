"""Trust without ground truth (`pipeline.refine.trust`): features, the logistic score, the decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.refine import RefineOptions
from pipeline.refine.cascade import refine_detailed
from pipeline.refine.trust import (
    FEATURES,
    Outcome,
    TrustModel,
    decide,
    load_trust_model,
    shipped_trust_model_path,
    split_outcome,
    trust_features,
)


def _scene(h: int = 64, w: int = 80, edge: int = 40) -> np.ndarray:
    """Dark left half, bright right half from column ``edge``: one strong vertical edge."""
    image = np.full((h, w, 3), 30, np.uint8)
    image[:, edge:] = 220
    return image


def _band(h: int, w: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[8:56, c0:c1] = 1
    return m


def test_identical_masks_have_no_change():
    image = _scene()
    coarse = _band(64, 80, 40, 70)
    f = trust_features(coarse.copy(), coarse, image)
    assert set(f) == set(FEATURES)
    assert f["shift_px"] == 0 and f["area_change"] == 0 and f["thin_share"] == 0 and f["edge_gain"] == 0
    assert f["band_spread"] == 0  # no passes given


def test_a_one_pixel_move_is_thin_and_a_thick_one_is_not():
    image = _scene()
    coarse = _band(64, 80, 40, 70)
    moved1 = _band(64, 80, 39, 70)  # the left line one pixel out
    f1 = trust_features(moved1, coarse, image)
    assert f1["thin_share"] == 1.0
    assert f1["area_change"] == pytest.approx(48 / (48 * 30))
    moved6 = _band(64, 80, 34, 70)
    f6 = trust_features(moved6, coarse, image)
    assert f6["thin_share"] == 0.0
    # changed pixels per line pair: the coarse line has 2 * 48 vertical-line pairs + 2 * 30 horizontal
    assert f6["shift_px"] == pytest.approx(6 * 48 / (2 * 48 + 2 * 30))
    assert f6["shift_px"] > f1["shift_px"]


def test_edge_features_see_where_the_lines_sit():
    image = _scene(edge=40)
    on_edge = _band(64, 80, 40, 70)
    off_edge = _band(64, 80, 44, 70)
    to_edge = trust_features(on_edge, off_edge, image)  # the refiner moved the line onto the edge
    from_edge = trust_features(off_edge, on_edge, image)  # ... or off it
    assert to_edge["edge_gain"] > 0.5 and from_edge["edge_gain"] < -0.5
    assert from_edge["coarse_edge"] > to_edge["coarse_edge"]


def test_band_spread_and_uncertainty_come_from_the_band():
    image = _scene()
    coarse = _band(64, 80, 40, 70)
    prob = coarse * 0.9 + 0.05
    spread = np.zeros_like(coarse)
    spread[:, 38:43] = 0.2  # the passes disagree along the left line
    f = trust_features(prob, coarse, image, spread)
    assert 0 < f["band_spread"] <= 0.2
    assert f["band_uncertainty"] == pytest.approx(0.1, abs=1e-6)
    far = np.zeros_like(coarse)
    far[0:3, 0:3] = 0.9  # outside the band: ignored
    assert trust_features(prob, coarse, image, far)["band_spread"] == 0


def test_coarse_detail_tells_a_smooth_line_from_a_detailed_one():
    image = _scene()
    yy, xx = np.mgrid[:64, :80]
    disc = (((yy - 32) ** 2 + (xx - 40) ** 2) < 20**2).astype(np.float32)
    rough = disc.copy()
    rough[::2, :] = np.roll(disc[::2, :], 2, axis=1)  # a 2 px zigzag along the line
    assert trust_features(disc, disc, image)["coarse_detail"] < 0.1
    assert trust_features(rough, rough, image)["coarse_detail"] > 0.2


def test_coarse_side_tells_where_the_edge_lies_against_the_coarse_line():
    """The edge at column 40; a coarse mask from column 41 on is drawn a pixel inside the bright
    object (the edge lies outside its line: > 0), one from column 39 on a pixel outside (< 0, the way
    people draw), one from 40 on the edge (both sides alike: 0)."""
    image = _scene(edge=40)
    side = {c0: trust_features(_band(64, 80, c0, 70), _band(64, 80, c0, 70), image)
            for c0 in (38, 39, 40, 41)}
    assert side[41]["coarse_side"] > 0.3 and side[41]["coarse_side2"] > 0.1
    assert side[39]["coarse_side"] < -0.3 and side[39]["coarse_side2"] < -0.1
    assert side[39]["coarse_side2"] < side[40]["coarse_side2"] < side[41]["coarse_side2"]
    assert side[38]["coarse_side2"] < -0.1
    assert abs(side[40]["coarse_side"]) < 0.1
    assert side[38]["coarse_side"] == -3.0  # flat ground on the line, the edge 2 px in: clipped


@pytest.mark.parametrize("h,w,c0", [(120, 90, 0), (300, 64, 5), (700, 50, 2)])  # strips of 128 rows
def test_the_line_profile_equals_edge_profile(h, w, c0):
    """coarse_side's strip-wise profile is :func:`pipeline.train.regions.edge_profile` (whole image)
    times the image's mean gradient, incl. lines at the image's border (c0: the mask's first
    column)."""
    from pipeline.boundary import rgb_gradient
    from pipeline.refine.trust import _band_box, _line_profile
    from pipeline.train.regions import edge_profile

    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    coarse = (((yy - h / 2) / (h / 2.5)) ** 2 + ((xx - w / 2) / (w / 2.5)) ** 2 <= 1)
    coarse[:, c0 : c0 + 4] = True
    coarse[rng.random((h, w)) > 0.98] = True
    box = _band_box(coarse, coarse, 3)
    got = _line_profile(image, coarse, box)
    want = edge_profile(image, np.where(coarse, 255, 0).astype(np.uint8), 3)
    want = want * max(float(rgb_gradient(image).astype(np.float64).mean()), 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_empty_and_full_masks_do_not_fail():
    image = _scene()
    empty = np.zeros((64, 80), np.float32)
    f = trust_features(empty, empty, image)
    assert f["area_change"] == 0 and f["shift_px"] == 0
    full = np.ones((64, 80), np.float32)
    assert trust_features(full, full, image)["shift_px"] == 0
    assert trust_features(full, empty, image)["area_change"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        trust_features(empty, empty[:3], image)


def _model(**kw) -> TrustModel:
    base = dict(features=("shift_px", "coarse_edge"), mean=(1.0, 2.0), scale=(0.5, 1.0), coef=(2.0, -1.0),
                intercept=0.5, min_score=0.6, meta={"fitted_on": ["x"]})
    return TrustModel(**{**base, **kw})


def _dense_trust_features(prob, coarse01, image, spread=None, band=3):
    """The first implementation of the band's pair contrasts and coarse_detail (whole-box pair maps
    and one blur of the whole box), as a reference for the gathered / strip-wise one."""
    import math

    import cv2

    from pipeline.refine.trust import _EPS, DETAIL_SIGMAS, _band_box, _line_pairs

    c_full, r_full = coarse01 > 0.5, prob > 0.5
    box = _band_box(c_full, r_full, band)
    c, r = c_full[box], r_full[box]
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    lines = np.zeros(c.shape, np.uint8)
    for m in (c, r):
        m8 = m.astype(np.uint8)
        lines |= cv2.dilate(m8, kernel) ^ cv2.erode(m8, kernel)
    in_band = lines.astype(bool)
    ch, cv = _line_pairs(c)
    rh, rv = _line_pairs(r)
    band_h, band_v = in_band[:, 1:] & in_band[:, :-1], in_band[1:] & in_band[:-1]
    img = image[box]
    use_h, use_v = np.nonzero(ch | rh | band_h), np.nonzero(cv | rv | band_v)
    y, x = use_h
    con_h = np.sqrt(np.square(img[y, x + 1].astype(np.float32) - img[y, x]).sum(-1))
    y, x = use_v
    con_v = np.sqrt(np.square(img[y + 1, x].astype(np.float32) - img[y, x]).sum(-1))

    def mean(sel_h, sel_v):
        mh, mv = sel_h[use_h], sel_v[use_v]
        n = int(np.count_nonzero(mh)) + int(np.count_nonzero(mv))
        return (float(con_h[mh].sum() + con_v[mv].sum()) / n, n) if n else (0.0, 0)

    old, n_old = mean(ch, cv)
    new, _ = mean(rh, rv)
    every, _ = mean(band_h, band_v)
    out = {"coarse_edge": (old + _EPS) / (every + _EPS), "edge_gain": math.log((new + _EPS) / (old + _EPS))}
    c32 = c.astype(np.float32)
    for name, sigma in DETAIL_SIGMAS.items():
        blurred = cv2.GaussianBlur(c32, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) > 0.5
        out[name] = int(np.count_nonzero(blurred != c)) / max(1, n_old)
    return out


@pytest.mark.parametrize("h,w", [(120, 90), (2600, 64)])  # the second: three blur strips
def test_edge_and_detail_features_equal_the_dense_computation(h, w):
    """The gathered band pairs and the strip-wise blur give the same coarse_edge, edge_gain and
    coarse_detail* as the whole-box computation, exactly."""
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    coarse = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1).astype(np.float32)
    coarse[rng.random((h, w)) > 0.97] = 1  # a detailed (noisy) line and specks
    prob = np.clip(coarse + rng.normal(0, 0.3, (h, w)), 0, 1).astype(np.float32)
    got = trust_features(prob, coarse, image)
    want = _dense_trust_features(prob, coarse, image)
    assert want["coarse_detail4"] > 0 and want["edge_gain"] != 0
    for name, value in want.items():
        assert got[name] == value, name


def test_score_is_the_logistic_of_the_standardised_features():
    m = _model()
    z = 0.5 + 2.0 * (2.0 - 1.0) / 0.5 - 1.0 * (1.0 - 2.0) / 1.0
    assert m.score({"shift_px": 2.0, "coarse_edge": 1.0}) == pytest.approx(1 / (1 + np.exp(-z)))
    assert m.score({"shift_px": 1e9, "coarse_edge": 0}) == pytest.approx(1.0)  # no overflow


def test_trust_model_files_round_trip_and_bad_ones_are_named(tmp_path):
    m = _model()
    path = tmp_path / "t.json"
    m.save(str(path))
    assert load_trust_model(str(path)) == m
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        load_trust_model(str(tmp_path / "bad.json"))
    (tmp_path / "partial.json").write_text(json.dumps({"features": ["shift_px"]}))
    with pytest.raises(ValueError, match="partial.json: not a trust model"):
        load_trust_model(str(tmp_path / "partial.json"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_trust_model(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="unknown features"):
        _model(features=("shift_px", "colour"))
    with pytest.raises(ValueError, match="2 features but"):
        _model(coef=(1.0,))


def test_the_shipped_trust_model_loads_and_scores_in_0_1():
    m = load_trust_model("shipped")
    assert load_trust_model(shipped_trust_model_path()) == m
    assert all(f in FEATURES or f.removeprefix("log_") in FEATURES for f in m.features)
    assert 0 < m.min_score < 1
    s = m.score(dict.fromkeys(FEATURES, 0.5))
    assert 0 < s < 1


def test_decide_keeps_the_coarse_mask_below_min_score():
    m = _model()
    good, bad = {"shift_px": 3.0, "coarse_edge": 1.0}, {"shift_px": 0.1, "coarse_edge": 3.0}
    assert decide(good, m).accepted and not decide(bad, m).accepted
    assert decide(bad, m, min_score=0.0).accepted
    d = decide(bad, m, "none")
    assert d.accepted and d.score == pytest.approx(m.score(bad))
    assert decide(bad, None, "none").score is None
    with pytest.raises(ValueError, match="needs a trust model"):
        decide(bad, None, "score")
    with pytest.raises(ValueError, match="accept policy"):
        decide(bad, m, "always")


def test_split_outcome_takes_outcomes_and_plain_arrays():
    p = np.zeros((2, 2), np.float32)
    assert split_outcome(p)[1:] == ({}, None)
    prob, info, cand = split_outcome(Outcome(p, {"accepted": False}, p + 1))
    assert prob is p and info == {"accepted": False} and cand[0, 0] == 1


def test_refine_detailed_reports_the_spread_of_the_tta_passes(random_mnv2, small_case):
    image, coarse = small_case
    one = refine_detailed(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,)))
    two = refine_detailed(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,), tta="rot180"))
    assert one.spread is None and two.spread.shape == coarse.shape
    # the two passes: as is, and turned 180 degrees (turned back); mean and standard deviation
    a = one.prob
    b = refine_detailed(random_mnv2, image[::-1, ::-1].copy(), coarse[::-1, ::-1].copy(),
                        options=RefineOptions(scales=(1.0,))).prob[::-1, ::-1]
    assert np.allclose(two.prob, (a + b) / 2, atol=1e-5)
    # (float32 E[p^2] - E[p]^2 under a square root: ~3e-4 off where the passes nearly agree)
    assert np.allclose(two.spread, np.abs(a - b) / 2, atol=1e-3) and two.spread.max() > 0.01
    f = trust_features(two.prob, two.coarse01, image, two.spread)
    assert f["band_spread"] > 0


def test_log_inputs_of_a_model():
    from pipeline.refine.trust import model_input

    f = dict.fromkeys(FEATURES, 0.0)
    f["shift_px"] = 0.99
    assert model_input("shift_px", f) == 0.99
    assert model_input("log_shift_px", f) == pytest.approx(0.0)  # log(0.99 + 0.01)
    m = _model(features=("log_shift_px",), mean=(0.0,), scale=(1.0,), coef=(1.0,), intercept=0.0)
    assert m.score(f) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown features"):
        _model(features=("log_colour", "shift_px"))
