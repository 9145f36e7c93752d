"""The ``regions`` proposal source: same interface as SAM's generator, finds real objects,
nested hierarchy, deterministic colour maps, validated settings, a plan without GPUs for it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.sam import FastMaskGenerator, propose
from pipeline.sam.generator import SamMasks
from pipeline.sam.regions import RegionGenerator, RegionSettings, region_hierarchy


def _objects_image(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(240, 320, 3) noisy image with three flat-coloured objects; their (240, 320) bool truths."""
    rng = np.random.default_rng(seed)
    image = np.full((240, 320, 3), (70, 110, 60), np.float32)
    truths = []
    for cx, cy, r in [(80, 80, 40), (220, 150, 55), (120, 185, 30)]:
        m = np.zeros((240, 320), np.uint8)
        cv2.circle(m, (cx, cy), r, 1, -1)
        truths.append(m.astype(bool))
    for t, colour in zip(truths, [(230, 40, 40), (40, 60, 220), (240, 220, 90)]):
        image[t] = colour
    for i, t in enumerate(truths):  # later objects are drawn over earlier ones
        for later in truths[i + 1:]:
            t &= ~later
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truths


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(params=["sam", "regions"])
def source(request, sam_small):
    if request.param == "sam":
        return FastMaskGenerator(sam_small, points_per_side=6, pred_iou_thresh=0.0,
                                 stability_score_thresh=0.0)
    return RegionGenerator(RegionSettings(segment_size=160, min_area=0.002))


def test_both_sources_give_the_same_kind_of_output(source, image):
    """One interface (DESIGN 2.4b): SamMasks at the input size, then the same rendering."""
    found = source.generate(image)
    assert isinstance(found, SamMasks) and len(found) > 0
    n, (h, w) = len(found), image.shape[:2]
    assert found.masks.shape == (n, h, w) and found.masks.dtype == np.bool_
    assert found.scores.shape == found.stability.shape == (n,) and found.scores.dtype == np.float32
    assert np.all(np.isfinite(found.scores)) and np.all(found.stability <= 1.0 + 1e-6)
    np.testing.assert_array_equal(found.areas, found.masks.reshape(n, -1).sum(1))
    for i in range(n):
        ys, xs = np.nonzero(found.masks[i])
        assert found.boxes[i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    props = propose(source, image, "k", working_size=1024, seed=3)
    assert np.all(np.diff(props.areas) <= 0)  # paint order: large first
    again = propose(source, image, "k", working_size=1024, seed=3)
    np.testing.assert_array_equal(props.colour_map, again.colour_map)
    other = propose(source, image, "other-key", working_size=1024, seed=3)
    np.testing.assert_array_equal(other.label_map, props.label_map)  # same masks, other colours
    assert not np.array_equal(other.colour_map, props.colour_map)
    gaps = props.label_map == 0
    assert np.all(props.colour_map[gaps] == 0) and np.all(props.colour_map[~gaps].max(1) > 0)


def test_regions_find_the_objects_and_their_edges():
    image, truths = _objects_image()
    gen = RegionGenerator(RegionSettings(segment_size=320, min_area=0.002))
    found = gen.generate(image)
    for t in truths:
        best = max(_iou(m, t) for m in found.masks)
        assert best > 0.9, best
    # scores: boundary contrast c / (1 + c); objects' boundaries lie on strong edges, while the
    # regions of pure texture (smoothed noise) are cuts through it (c ~ 1, score ~ 0.5)
    obj = [int(np.argmax([_iou(m, t) for m in found.masks])) for t in truths]
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3)).astype(np.uint8)
    noise = cv2.GaussianBlur(noise, (0, 0), 2)
    texture = gen.generate(noise)
    assert len(texture) > 0 and min(found.scores[obj]) > 0.8 > float(np.max(texture.scores))
    assert np.all((found.scores > 0) & (found.scores < 1))
    assert np.all((found.stability > 0) & (found.stability <= 1))
    assert gen.last_stats["fine_segments"] >= len(truths) + 1


def test_regions_work_at_a_lower_segment_size_and_come_back_at_the_input_size():
    image, truths = _objects_image(1)
    big = cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)
    found = RegionGenerator(RegionSettings(segment_size=160, min_area=0.002)).generate(big)
    assert found.masks.shape[1:] == (480, 640)
    for t in truths:
        t2 = cv2.resize(t.astype(np.uint8), (640, 480), interpolation=cv2.INTER_NEAREST).astype(bool)
        assert max(_iou(m, t2) for m in found.masks) > 0.85


def test_hierarchy_levels_nest_and_shrink():
    image, _ = _objects_image(2)
    from pipeline.sam.regions import _fine_segments

    fine = _fine_segments(image, RegionSettings(scale=20.0, min_segment=0.0005))
    tables = region_hierarchy(fine, image, levels=4, merge_factor=3.0)
    counts = [len(np.unique(t)) for t in tables]
    assert counts[0] == fine.max() + 1 and len(tables) == 4
    for k in range(1, len(tables)):
        assert counts[k] <= counts[k - 1] / 3.0 + 1
        # nesting: fine segments in one region at level k-1 share one region at level k
        for region in np.unique(tables[k - 1]):
            assert len(np.unique(tables[k][tables[k - 1] == region])) == 1
    one = region_hierarchy(fine, image, levels=50, merge_factor=3.0)
    assert len(np.unique(one[-1])) == 1  # merges stop at a single region


def test_regions_are_deterministic_and_skip_unchanged_regions():
    image, _ = _objects_image(3)
    gen = RegionGenerator(RegionSettings(segment_size=320))
    a, b = gen.generate(image), gen.generate(image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    flat = a.masks.reshape(len(a), -1)
    assert len({m.tobytes() for m in flat}) == len(a)  # no mask twice
    assert not np.any(a.areas == image.shape[0] * image.shape[1])  # never the whole image


def test_flat_image_gives_no_proposals():
    flat = np.full((64, 80, 3), 128, np.uint8)
    found = RegionGenerator(RegionSettings(segment_size=64)).generate(flat)
    assert len(found) == 0 and found.masks.shape == (0, 64, 80)
    props = propose(RegionGenerator(RegionSettings(segment_size=64)), flat, "flat")
    assert np.all(props.colour_map == 0) and np.all(props.label_map == 0)


@pytest.mark.parametrize("field,value", [("algorithm", "slic"), ("segment_size", 8), ("min_segment", 0.0),
                                         ("merge_factor", 1.0), ("levels", 0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RegionSettings(**{field: value})


def test_settings_digest_and_description():
    a = RegionSettings()
    assert a.describe() == "regions:felzenszwalb"
    assert a.digest() == RegionSettings().digest() != RegionSettings(scale=200.0).digest()
    assert len(a.digest()) == 16
