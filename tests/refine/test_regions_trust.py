"""Per-region acceptance (`pipeline.refine.regions_trust`): the changes' features, the model, the decision."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pipeline.refine import RefineOptions
from pipeline.refine.regions_trust import (
    REGION_FEATURES,
    Changes,
    RegionTrustModel,
    accept_regions,
    changes_of,
    decide_regions,
    load_region_model,
    shipped_region_model_path,
)
from pipeline.refine.trust import FEATURES, TrustModel


def _scene(h: int = 64, w: int = 80, edge: int = 40) -> np.ndarray:
    """Dark left, bright right from column ``edge``: one strong vertical edge."""
    image = np.full((h, w, 3), 30, np.uint8)
    image[:, edge:] = 220
    return image


def _band(c0: int, c1: int, h: int = 64, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[8:56, c0:c1] = 1
    return m


def test_no_change_no_regions():
    coarse = _band(40, 70)
    changes = changes_of(coarse.copy(), coarse, _scene())
    assert changes.n == 0 and not changes.labels.any() and set(changes.features) == set(REGION_FEATURES)
    with pytest.raises(ValueError, match="shapes differ"):
        changes_of(coarse, coarse[:3], _scene())


def _dense_changes_of(prob, coarse01, image, spread=None, grow=1):
    """The features computed densely over the changes' bounding box (the first implementation,
    kept as a reference: whole-box contrast maps, float64 labels and weights)."""
    import cv2

    from pipeline.metrics import binarize
    from pipeline.refine.edgecheck import _credit, _pair_contrast
    from tests.helpers import region_means

    after, before = binarize(prob), binarize(coarse01)
    changed = after != before
    rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
    pad = grow + 2
    box = (slice(max(0, rows[0] - pad), min(prob.shape[0], rows[-1] + pad + 1)),
           slice(max(0, cols[0] - pad), min(prob.shape[1], cols[-1] + pad + 1)))
    n, lab = cv2.connectedComponents(changed[box].astype(np.uint8), connectivity=8)
    b, a, inside = before[box], after[box], lab > 0
    horizontal, vertical = _pair_contrast(image[box])
    old = _credit(horizontal, vertical, b[:, 1:] != b[:, :-1], b[1:] != b[:-1])
    new = _credit(horizontal, vertical, a[:, 1:] != a[:, :-1], a[1:] != a[:-1])
    every = _credit(horizontal, vertical, None, None)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    region = cv2.dilate(lab.astype(np.float64), kernel).astype(np.int64)
    region[inside] = lab[inside]
    where = np.flatnonzero(region)
    old_mean, old_n = region_means(region, where, n, *old)
    new_mean, new_n = region_means(region, where, n, *new)
    any_mean, _ = region_means(region, where, n, *every)
    flat = lab.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    radius = np.zeros(n)
    np.maximum.at(radius, flat, dist.ravel())
    added = np.bincount(flat, weights=(a & inside).ravel().astype(np.float64), minlength=n)
    s = np.zeros(lab.shape) if spread is None else spread[box].astype(np.float64)
    spread_in = np.bincount(flat, weights=s.ravel(), minlength=n)
    ring = (region > 0) & ~inside
    spread_ring = np.bincount(region[ring], weights=s[ring], minlength=n)
    n_ring = np.bincount(region[ring], minlength=n)
    margin = np.bincount(flat, weights=np.abs(2 * prob[box].astype(np.float64) - 1).ravel(), minlength=n)
    k = slice(1, None)
    line = np.maximum(old_n[k], new_n[k]) / 2
    eps = 1.0
    return lab, box, {
        "log_size": np.log(size[k]), "radius": radius[k], "log_len": np.log1p(line),
        "depth": size[k] / np.maximum(1, line), "added": added[k] / size[k],
        "edge_new_old": np.log((new_mean[k] + eps) / (old_mean[k] + eps)),
        "edge_new_any": np.log((new_mean[k] + eps) / (any_mean[k] + eps)),
        "edge_old_any": np.log((old_mean[k] + eps) / (any_mean[k] + eps)),
        "spread": spread_in[k] / size[k], "spread_ring": spread_ring[k] / np.maximum(1, n_ring[k]),
        "margin": margin[k] / size[k], "share": size[k] / size[k].sum(),
    }


@pytest.mark.parametrize("case", ["noise", "touching-border", "no-spread", "grow2", "tall"])
def test_features_equal_the_dense_computation_over_the_box(case):
    """The lean computation (pixel pairs gathered for the changed pixels and their ring only) gives
    the same features, bit for bit, as the dense one over the changes' bounding box."""
    rng = np.random.default_rng(7)
    h, w = (700, 60) if case == "tall" else (90, 120)  # tall: several strips of rows
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coarse = np.zeros((h, w), np.float32)
    coarse[20 : h - 20, 30 : w - 20] = 1
    prob = np.clip(coarse + rng.normal(0, 0.45, (h, w)).astype(np.float32), 0, 1)
    if case == "touching-border":
        prob[0:6, :] = 1  # changes on the image's border: pairs leave the box
        prob[:, -3:] = 1
    spread = None if case == "no-spread" else rng.random((h, w)).astype(np.float32) * 0.2
    grow = 2 if case == "grow2" else 1
    changes = changes_of(prob, coarse, image, spread, grow)
    lab, box, dense = _dense_changes_of(prob, coarse, image, spread, grow)
    assert changes.n == len(dense["log_size"]) > 20
    np.testing.assert_array_equal(changes.labels[box], lab)
    assert not changes.labels[~np.isin(np.arange(h), np.arange(h)[box[0]])].any()
    for name in REGION_FEATURES:
        np.testing.assert_array_equal(changes.features[name], dense[name], err_msg=name)


def test_features_take_a_few_bytes_per_pixel():
    """A sliver along a long line and a hole far from it (a box of most of the image, few changed
    pixels): numpy's allocations (tracemalloc) stay near the returned int32 labels, not the dense
    computation's float64 maps (29 B/px measured here)."""
    import tracemalloc

    h, w = 600, 800
    image = np.full((h, w, 3), 50, np.uint8)
    coarse = np.zeros((h, w), np.float32)
    coarse[40:560, 40:760] = 1
    prob = coarse.copy()
    prob[40:560, 39] = 1
    prob[300:310, 400:410] = 0
    spread = np.zeros((h, w), np.float32)
    tracemalloc.start()
    try:
        changes = changes_of(prob, coarse, image, spread)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert changes.n == 2
    assert peak / (h * w) < 12  # bytes per image pixel (lean: ~9.7; the labels alone are 4)


def test_a_sliver_and_a_blob_are_two_changes_with_their_own_features():
    coarse = _band(41, 70)
    refined = _band(40, 70)  # the left line 1 px out, onto the image's edge at column 40
    refined[20:30, 72:78] = 1  # and a 10 x 6 island to the right, on a flat bright area
    spread = np.zeros_like(coarse)
    spread[20:30, 72:78] = 0.3  # the TTA passes disagree on the island only
    changes = changes_of(refined, coarse, _scene(), spread)
    assert changes.n == 2
    f = changes.features
    sizes = np.exp(f["log_size"])
    sliver = int(np.argmin(sizes))
    blob = 1 - sliver
    assert sizes[sliver] == pytest.approx(48) and sizes[blob] == pytest.approx(60)
    assert f["radius"][sliver] == 1.0 and f["radius"][blob] == 3.0  # inscribed: 1 px wide vs 6 px wide
    assert f["depth"][sliver] == pytest.approx(1.0, abs=0.1)  # one pixel per pixel of line
    assert f["added"][sliver] == 1.0 and f["added"][blob] == 1.0
    # the sliver's new line lies on the edge (contrast 330), the old one 1 px inside it (0)
    assert f["edge_new_old"][sliver] > 4 and f["edge_new_any"][sliver] > 0
    # the island's line crosses no contrast at all
    assert f["edge_new_old"][blob] == pytest.approx(0.0) and f["edge_new_any"][blob] <= 0
    assert f["spread"][blob] == pytest.approx(0.3, abs=1e-6) and f["spread"][sliver] == 0
    assert f["share"].sum() == pytest.approx(1.0) and f["share"][blob] == pytest.approx(60 / 108)
    assert f["margin"][sliver] == pytest.approx(1.0)  # a hard 0/1 refined mask


def _model(**kw) -> RegionTrustModel:
    base = dict(features=("radius", "edge_new_old", "image_logit", "log_coarse_detail"),
                mean=(1.0, 0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0, 1.0), coef=(1.0, 1.0, 0.5, -1.0),
                intercept=-1.0, min_score=0.5, meta={"fitted_on": ["x"]})
    return RegionTrustModel(**{**base, **kw})


def test_scores_are_the_logistic_of_region_and_image_inputs():
    coarse = _band(41, 70)
    refined = _band(40, 70)
    refined[20:30, 72:78] = 1
    changes = changes_of(refined, coarse, _scene())
    m = _model()
    image = dict.fromkeys(FEATURES, 0.0)
    image["coarse_detail"] = 0.5
    s = m.scores(changes, image, 0.8)
    f = changes.features
    z = (-1.0 + (f["radius"] - 1.0) + f["edge_new_old"] + 0.5 * math.log(0.8 / 0.2) - math.log(0.51))
    assert np.allclose(s, 1 / (1 + np.exp(-z)))
    product = _model(features=("radius*log_coarse_detail",), mean=(0.0,), scale=(2.0,), coef=(1.0,),
                     intercept=0.0)
    z = f["radius"] * math.log(0.51) / 2.0
    assert np.allclose(product.scores(changes, image, 0.8), 1 / (1 + np.exp(-z)))
    for bad in ("colour", "radius*colour", "radius*margin*depth"):
        with pytest.raises(ValueError, match="unknown inputs"):
            _model(features=("radius", bad, "image_logit", "log_coarse_detail"))


def test_region_model_files_round_trip(tmp_path):
    m = _model()
    m.save(str(tmp_path / "r.json"))
    assert load_region_model(str(tmp_path / "r.json")) == m
    with pytest.raises(FileNotFoundError, match="region trust model .*missing.json"):
        load_region_model(str(tmp_path / "missing.json"))
    d = m.to_dict()
    del d["min_score_thick"]
    (tmp_path / "old.json").write_text(json.dumps(d))  # an image-level model's fields only
    with pytest.raises(ValueError, match="old.json: not a trust model .*min_score_thick"):
        load_region_model(str(tmp_path / "old.json"))


def test_thin_and_thick_changes_have_their_own_threshold():
    coarse = _band(41, 70)
    refined = _band(40, 70)
    refined[20:30, 72:78] = 1  # a 1 px sliver (radius 1) and a 10 x 6 island (radius 3)
    changes = changes_of(refined, coarse, _scene())
    thin = changes.features["radius"] <= 1.5
    # every score 0.5
    flat = _model(features=("radius",), mean=(0.0,), scale=(1.0,), coef=(0.0,), intercept=0.0)
    image = dict.fromkeys(FEATURES, 0.0)
    assert list(flat.accepts(changes, image, 0.5)) == [True, True]
    strict_thick = dataclasses.replace(flat, min_score_thick=0.6)
    assert np.array_equal(strict_thick.accepts(changes, image, 0.5), thin)
    strict_thin = dataclasses.replace(flat, min_score=0.6, min_score_thick=0.4)
    assert np.array_equal(strict_thin.accepts(changes, image, 0.5), ~thin)


def test_below_the_image_gate_no_change_is_taken(tmp_path):
    coarse = _band(41, 70)
    refined = _band(40, 70)
    refined[20:30, 72:78] = 1
    changes = changes_of(refined, coarse, _scene())
    flat = _model(features=("radius",), mean=(0.0,), scale=(1.0,), coef=(0.0,), intercept=2.0)  # 0.88
    gated = dataclasses.replace(flat, min_image_score=0.2)
    image = dict.fromkeys(FEATURES, 0.0)
    assert flat.accepts(changes, image, 0.05).all()
    assert not gated.accepts(changes, image, 0.19).any()  # the image model doubts the whole output
    assert gated.accepts(changes, image, 0.2).all()
    gated.save(str(tmp_path / "g.json"))
    assert load_region_model(str(tmp_path / "g.json")).min_image_score == 0.2
    d = gated.to_dict()
    del d["min_image_score"]  # a model written before the gate: no gate
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert load_region_model(str(tmp_path / "old.json")).min_image_score == 0.0
    with pytest.raises(ValueError, match="min_image_score 1.5"):
        dataclasses.replace(flat, min_image_score=1.5)


def test_a_large_image_model_adds_the_changes_it_takes_from_its_side_on(tmp_path):
    coarse = _band(41, 70)
    refined = _band(40, 70)
    refined[20:30, 72:78] = 1  # a 1 px sliver and a 10 x 6 island
    changes = changes_of(refined, coarse, _scene())
    thin = changes.features["radius"] <= 1.5
    side = max(coarse.shape)
    image = dict.fromkeys(FEATURES, 0.0)
    flat = _model(features=("radius",), mean=(0.0,), scale=(1.0,), coef=(0.0,), intercept=0.0)  # 0.5
    thin_only = dataclasses.replace(flat, min_score_thick=1.01, min_image_score=0.3)
    thick_only = dataclasses.replace(flat, min_score=1.01, min_score_thick=0.4)
    both = dataclasses.replace(thin_only, large=thick_only, large_from_side=side)
    assert both.accepts(changes, image, 0.5).all()  # either model's changes
    smaller = dataclasses.replace(both, large_from_side=side + 1)
    assert np.array_equal(smaller.accepts(changes, image, 0.5), thin)
    assert np.array_equal(both.accepts(changes, image, 0.2), ~thin)  # each model with its own gate
    both.save(str(tmp_path / "both.json"))
    loaded = load_region_model(str(tmp_path / "both.json"))
    assert loaded == both and loaded.large == thick_only and loaded.large_from_side == side
    for bad in (dict(large=thick_only, large_from_side=0), dict(large=both, large_from_side=side)):
        with pytest.raises(ValueError, match="large_from_side"):
            dataclasses.replace(flat, **bad)


def test_accept_regions_keeps_the_accepted_changes_only():
    coarse = _band(41, 70)
    refined = _band(40, 70) * 0.9
    refined[20:30, 72:78] = 0.8
    changes = changes_of(refined, coarse, _scene())
    sizes = np.exp(changes.features["log_size"])
    sliver = int(np.argmin(sizes))
    accept = np.arange(changes.n) == sliver
    out, share = accept_regions(refined, coarse, changes, accept)
    assert share == pytest.approx(48 / 108)
    assert (out[8:56, 40] == pytest.approx(0.9)) and not out[20:30, 72:78].any()
    assert set(np.unique(out[changes.labels == 0])) <= {0.0, 1.0}  # elsewhere: the coarse mask exactly
    _, all_share = accept_regions(refined, coarse, changes, np.ones(changes.n, bool))
    none, none_share = accept_regions(refined, coarse, changes, np.zeros(changes.n, bool))
    assert all_share == 1.0 and none_share == 0.0 and np.array_equal(none, coarse)
    with pytest.raises(ValueError, match="3 decisions for 2 changes"):
        accept_regions(refined, coarse, changes, np.ones(3, bool))


def test_decide_regions_takes_the_edge_supported_change_and_undoes_the_island():
    coarse = _band(41, 70)
    refined = _band(40, 70)
    refined[20:30, 72:78] = 1
    m = _model(features=("edge_new_old",), mean=(0.0,), scale=(1.0,), coef=(2.0,), intercept=-0.5)
    image = TrustModel(("shift_px",), (0.0,), (1.0,), (1.0,), 0.0, 0.9, {})  # score sigmoid(shift_px)
    low = {**dict.fromkeys(FEATURES, 0.0), "shift_px": 0.0}
    high = {**low, "shift_px": 5.0}
    out, share, score = decide_regions(refined, coarse, _scene(), None, low, image, m)
    assert out[8:56, 40].all() and not out[20:30, 72:78].any() and share == pytest.approx(48 / 108)
    assert score == pytest.approx(0.5)
    # an output the image-level policy accepts (score >= 0.9, or min_score) stays whole
    whole, share, score = decide_regions(refined, coarse, _scene(), None, high, image, m)
    assert whole is refined and share == 1.0 and score > 0.99
    assert decide_regions(refined, coarse, _scene(), None, low, image, m, min_score=0.5)[1] == 1.0


def test_the_shipped_region_model_loads():
    m = load_region_model("shipped")
    assert load_region_model(shipped_region_model_path()) == m
    # thin changes (a line moved by 1-3 px) and thick ones each above a threshold, behind the image gate
    assert 0 < m.min_score < 1 and 0 < m.min_score_thick < 1 and 0 < m.min_image_score < 1
    assert set(REGION_FEATURES) <= set(m.features)
    assert {"coarse_side", "coarse_side2", "added*coarse_side"} <= set(m.features)
    # from 1536 px on (not the 481-1024 px sets v3 was measured on) a model fitted at 1.4-3k px joins
    # it: thick changes only, no gate
    assert m.large is not None and m.large_from_side == 1536
    assert (m.large.min_score, m.large.min_image_score) == (1.01, 0.0) and 0 < m.large.min_score_thick < 1
    assert set(REGION_FEATURES) <= set(m.large.features) and m.large.large is None


def test_the_shipped_region_model_reads_the_line_convention():
    """A 1-px strip the refiner removes along a good line: the shipped model trusts it less where the
    image's edge lies inside the coarse line (coarse_side < 0: drawn a pixel outside the object, as
    people draw) than where it lies outside (the coarse mask is too small there, so the refiner's
    move is not a convention shift); every other input equal."""
    m = load_region_model("shipped")
    n = 1
    strip = Changes(np.ones((1, 40), np.int32), {
        "log_size": np.log([40.0]), "radius": np.ones(n), "log_len": np.log1p([40.0]), "depth": np.ones(n),
        "added": np.zeros(n), "edge_new_old": np.zeros(n), "edge_new_any": np.ones(n),
        "edge_old_any": np.ones(n), "spread": np.full(n, 0.05), "spread_ring": np.full(n, 0.05),
        "margin": np.full(n, 0.6), "share": np.full(n, 0.1)})
    image = {**dict.fromkeys(FEATURES, 0.1), "coarse_edge": 1.0}
    inside = m.scores(strip, {**image, "coarse_side": -0.6, "coarse_side2": -0.2}, 0.7)[0]
    outside = m.scores(strip, {**image, "coarse_side": 0.6, "coarse_side2": 0.2}, 0.7)[0]
    assert inside < 0.5 * outside


def test_a_loaded_refiner_with_accept_regions_reports_what_it_kept(random_mnv2, small_case, tmp_path):
    """The refine / relabel actors' refiner: policy regions writes the accepted changes only and says
    so (accepted, accepted_share); the refined candidate is kept when a change was undone."""
    import torch

    from pipeline.refine.cascade import refine_detailed
    from pipeline.refine.loaded import LoadedRefiner
    from pipeline.refine.trust import load_trust_model, trust_features

    torch.save(random_mnv2.state_dict(), tmp_path / "w.pt")
    options = {"scales": (1.0,), "tta": "rot180"}
    image, coarse = small_case
    r = refine_detailed(random_mnv2, image, coarse, options=RefineOptions(**options))
    features = trust_features(r.prob, r.coarse01, image, r.spread)
    sizes = changes_of(r.prob, r.coarse01, image, r.spread).features["log_size"]
    # the larger half of the changes scores >= 0.5
    model = _model(features=("log_size",), mean=(float(np.median(sizes)),), scale=(1.0,), coef=(5.0,),
                   intercept=0.0, min_score_thick=0.5)
    model.save(str(tmp_path / "regions.json"))
    expected, share, score = decide_regions(r.prob, r.coarse01, image, r.spread, features,
                                            load_trust_model("shipped"), model,
                                            min_score=1.0)  # the image-level policy accepts nothing
    assert len(sizes) > 3 and 0 < share < 1  # some changes kept, some undone
    refiner = LoadedRefiner("crm_mnv2", str(tmp_path / "w.pt"), options, "cpu", 1,
                            {"policy": "regions", "trust_model": "shipped", "min_score": 1.0,
                             "region_model": str(tmp_path / "regions.json")})
    out = refiner(image, coarse, None)
    assert np.allclose(out.prob, expected, atol=1e-6)
    assert out.info["accepted"] is False and out.info["accepted_share"] == pytest.approx(share)
    # (the refiner folds BN into the convolutions: the same outputs to float rounding)
    assert out.info["trust_score"] == pytest.approx(score, rel=1e-3)
    assert np.allclose(out.candidate, r.prob, atol=1e-5)
    whole = LoadedRefiner("crm_mnv2", str(tmp_path / "w.pt"), options, "cpu", 1,
                          {"policy": "regions", "trust_model": "shipped", "min_score": 0.0})
    whole = whole(image, coarse, None)
    assert whole.info["accepted"] is True and whole.info["accepted_share"] == 1.0 and whole.candidate is None
