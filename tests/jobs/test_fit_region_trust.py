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


def test_the_rules_hold_a_policy_added_to_a_base_to_the_base_where_the_base_breaks_them():
    from jobs.fit_region_trust import meets, meets_sets

    def kind(worse, mba):
        return {"worse_policy": worse, "mba_policy": mba, "mba_coarse": 80.0}

    base = {"lowres16": kind(8.0, 80.1), "identity": kind(0.0, 79.9)}  # breaks both rules on one kind each
    assert not meets(base, 5.0)
    assert meets(base, 5.0, floor=base)
    assert meets({"lowres16": kind(8.0, 81.0), "identity": kind(5.0, 79.95)}, 5.0, floor=base)
    assert not meets({"lowres16": kind(9.0, 81.0), "identity": kind(0.0, 80.0)}, 5.0, floor=base)  # worse
    assert not meets({"lowres16": kind(0.0, 81.0), "identity": kind(0.0, 79.8)}, 5.0, floor=base)  # mean
    assert not meets({"lowres16": kind(6.0, 81.0), "identity": kind(0.0, 80.0)}, 5.0)  # without a floor: 5%
    assert meets_sets({"a": base}, 5.0, floor={"a": base}) and not meets_sets({"a": base}, 5.0)


def _write_outputs(folder, photos: int = 8) -> None:
    """Synthetic arrays in ``refine``'s format: a bright object right of a vertical edge, its truth on
    the edge (even photos) or drawn 1 px outside it (odd ones, which also show a bright patch the truth
    leaves out); per kind a coarse mask and a refined one whose changes help (a line moved onto the
    edge) or hurt (the patch taken in; a right line drawn outside moved onto the edge)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for p in range(photos):
        h, w, edge = 64, 96, int(rng.integers(30, 50))
        image = np.full((h, w, 3), 40, np.uint8)
        image[:, edge:] = 210
        if p % 2:
            image[20:30, 4:12] = 210
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)

        def band(c0, h=h, w=w, c1=edge + 40):
            m = np.zeros((h, w), np.float32)
            m[8:56, c0:c1] = 1
            return m

        truth, island = band(edge - p % 2), band(edge)
        island[20:30, 4:12] = 1
        pairs = {
            "lowres8": (band(edge + 1), band(edge)),
            "lowres16": (band(edge + 2), band(edge)),
            "blocky8": (band(edge + 3), band(edge)),
            "perturbed": (band(edge + 2), island),
            "identity": (truth, band(edge)),
        }
        arrays = {"image": image, "truth": (truth * 255).astype(np.uint8), "key": np.array(f"photo{p}_0")}
        for kind, (coarse, refined) in pairs.items():
            arrays.update({f"{kind}_c01": coarse.astype(np.float16), f"{kind}_pre": refined,
                           f"{kind}_spread": np.zeros((h, w), np.float16), f"{kind}_refine_s": np.array(1.0)})
        np.savez_compressed(folder / f"photo{p}_0.npz", **arrays)


def test_a_fit_added_to_a_base_takes_every_change_the_base_takes_and_reduces_to_the_plain_fit(tmp_path):
    import dataclasses

    from jobs.fit_region_trust import accepts, evaluate_sets, fit_model, format_sets, meets_sets
    from jobs.region_trust_arrays import load_sets
    from pipeline.refine.trust import load_trust_model

    _write_outputs(tmp_path / "set")
    outs = load_sets([str(tmp_path / "set")], "configs/demo.yaml")
    image_min = 1.01  # no output accepted whole: every change is decided by the region models
    plain = fit_model(outs, (), image_min)
    assert plain is not None
    model, res = plain
    nothing = dataclasses.replace(model, min_score=1.01, min_score_thick=1.01)
    with_nothing = fit_model(outs, (), image_min, base=nothing)
    assert with_nothing is not None
    assert format_sets(with_nothing[1]) == format_sets(res)  # a base that takes nothing changes nothing
    assert (with_nothing[0].min_score, with_nothing[0].coef) == (model.min_score, model.coef)
    everything = dataclasses.replace(model, min_score=0.0, min_score_thick=0.0, min_image_score=0.0)
    floor = evaluate_sets(outs, lambda i: accepts(everything, outs[i]), image_min)
    assert not meets_sets(floor, 5.0)  # taking every change breaks the rules (islands, right lines moved)
    added = fit_model(outs, (), image_min, base=everything)
    assert added is not None
    assert format_sets(added[1]) == format_sets(floor)  # no worse than the base, which takes every change
    assert load_trust_model("shipped").min_score < 1.01
