"""The offline fit of the per-change trust model (`jobs.fit_region_trust`): its design matrix."""

from __future__ import annotations

import math

import numpy as np

from jobs.fit_region_trust import IMAGE_INPUTS, INTERACTIONS, design, input_names
from pipeline.refine.regions_trust import REGION_FEATURES, RegionTrustModel
from pipeline.refine.trust import FEATURES


def _output(n: int, side: float, gains: list[float], photo: str) -> dict:
    rng = np.random.default_rng(n)
    rf = {name: rng.random(n) for name in REGION_FEATURES}
    feats = {**{name: 0.2 for name in FEATURES}, "coarse_side": side, "coarse_side2": side / 3}
    return {"n": n, "rf": rf, "feats": feats, "score": 0.7, "gain_px": np.array(gains), "photo": photo}


def test_the_convention_inputs_are_named_model_inputs_and_their_columns_are_products():
    outs = [_output(3, -0.5, [1.0, -2.0, 0.0], "a"), _output(0, 0.1, [], "b"),
            _output(2, 0.4, [-1.0, 3.0], "c")]
    inter = INTERACTIONS["convention"]
    d = design(outs, inter)
    names = input_names(inter)
    assert d["X"].shape == (5, len(names))  # one row per change; the output without changes has none
    col = {n: d["X"][:, i] for i, n in enumerate(names)}
    added = np.concatenate([outs[0]["rf"]["added"], outs[2]["rf"]["added"]])
    side = np.array([-0.5] * 3 + [0.4] * 2)
    np.testing.assert_allclose(col["coarse_side"], side)
    np.testing.assert_allclose(col["added*coarse_side"], added * side)
    np.testing.assert_allclose(col["added*coarse_side2"], added * side / 3)
    np.testing.assert_allclose(col["image_logit"], math.log(0.7 / 0.3))
    assert list(d["y"]) == [1, 0, 0, 0, 1] and list(d["photo"]) == ["a"] * 3 + ["c"] * 2
    # every input is one the pipeline's model can read: a model with these names loads and scores
    k = len(names)
    RegionTrustModel(features=tuple(names), mean=(0.0,) * k, scale=(1.0,) * k, coef=(0.1,) * k,
                     intercept=0.0, min_score=0.9, meta={})
    assert set(IMAGE_INPUTS) < set(names) and set(INTERACTIONS["wide"]) < set(inter)


def test_folds_group_a_photos_regions_and_keep_other_samples_apart():
    from jobs.region_trust_arrays import photo_of

    assert photo_of("bsds_val_101085_1") == photo_of("bsds_val_101085_0") == "bsds_val_101085"
    # composites and one-region samples: each key its own photo (not all of "train_full..." one fold)
    assert photo_of("train_full00021") == "train_full00021"
    assert photo_of("train_regions_full00003") == "train_regions_full00003"
    assert photo_of("holdout00004") == "holdout00004"


def test_folds_follow_the_source_maps_beside_a_set_where_a_photo_is_drawn_twice(tmp_path):
    import json

    from jobs.region_trust_arrays import photo_of, sample_sources

    (tmp_path / "set").mkdir()
    regions = {"r00000": "a.jpg", "r00071": "a.jpg", "r00001": "b.jpg"}
    (tmp_path / "regions_full.json").write_text(json.dumps(regions))
    (tmp_path / "composites_full.json").write_text(
        json.dumps({"c00000": {"foreground": "b.jpg", "background": "a.jpg"}})
    )
    (tmp_path / "photos.json").write_text("[]")  # not a source map
    sources = sample_sources(str(tmp_path / "set") + "/")
    assert sources == {"r00000": "a.jpg", "r00071": "a.jpg", "r00001": "b.jpg", "c00000": "b.jpg"}
    assert photo_of("r00071", sources) == photo_of("r00000", sources) != photo_of("r00001", sources)
    assert photo_of("c00000", sources) == "b.jpg"  # a composite's truth follows its foreground's edges
    assert photo_of("bsds_val_101085_1", sources) == "bsds_val_101085"
    assert sample_sources(str(tmp_path / "set" / "sub")) == {}
