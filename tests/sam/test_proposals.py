"""propose: masks at the working size, a reproducible colour map painted large-first."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.sam.generator import FastMaskGenerator
from pipeline.sam.proposals import (
    colour_map_to_size,
    paint,
    propose,
    stable_seed,
    to_working_size,
    working_shape,
)


@pytest.fixture(scope="module")
def generator(sam_small):
    return FastMaskGenerator(sam_small, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5)


@pytest.fixture(scope="module")
def proposals(generator, image):
    return propose(generator, image, key="img/001", working_size=80, seed=0)


def test_working_size(proposals, image):
    assert working_shape(120, 160, 80) == (60, 80)
    assert working_shape(1600, 2048, 1024) == (800, 1024)
    assert working_shape(3600, 5000, 1024) == (737, 1024)  # SAM's ResizeLongestSide rounding
    assert working_shape(50, 70, 1024) == (50, 70)  # never upscaled
    assert to_working_size(image, 80).shape == (60, 80, 3)
    p = proposals
    assert p.image_size == (120, 160) and p.working_size == (60, 80)
    assert p.masks.shape[1:] == (60, 80) and p.masks.dtype == np.bool_
    assert len(p.masks) >= 5
    assert p.colour_map.shape == (60, 80, 3) and p.colour_map.dtype == np.uint8
    assert p.label_map.shape == (60, 80) and p.label_map.dtype == np.int32
    assert p.scores.shape == p.areas.shape == (len(p.masks),)


def test_painted_large_first_with_black_gaps(proposals):
    p = proposals
    assert np.all(np.diff(p.areas) <= 0)
    assert np.array_equal(p.areas, p.masks.reshape(len(p.masks), -1).sum(1))
    # reference painting, one mask at a time, in order
    labels = np.zeros(p.label_map.shape, np.int32)
    for i, m in enumerate(p.masks):
        labels[m] = i + 1
    assert np.array_equal(p.label_map, labels)
    covered = p.masks.any(0)
    assert not covered.all(), "the test wants some gaps"
    assert np.all(p.colour_map[~covered] == 0)
    assert np.all(p.colour_map[covered].max(1) > 0)  # no mask is painted black
    for i in range(len(p.masks)):  # each label has one colour
        cols = np.unique(p.colour_map[p.label_map == i + 1], axis=0)
        assert len(cols) <= 1


def test_colours_deterministic_per_key(generator, image, proposals):
    again = propose(generator, image, key="img/001", working_size=80, seed=0)
    assert np.array_equal(again.colour_map, proposals.colour_map)
    other = propose(generator, image, key="img/002", working_size=80, seed=0)
    reseeded = propose(generator, image, key="img/001", working_size=80, seed=1)
    assert np.array_equal(other.label_map, proposals.label_map)  # same masks...
    assert not np.array_equal(other.colour_map, proposals.colour_map)  # ...other colours
    assert not np.array_equal(reseeded.colour_map, proposals.colour_map)


def test_seed_is_stable_across_processes():
    """SHA-256 of "seed\\0key", never Python's per-process salted hash()."""
    assert stable_seed("img/001", 0) == 17021735812651816860
    digest = hashlib.sha256(b"0\x00img/001").digest()
    assert stable_seed("img/001") == int.from_bytes(digest[:8], "little")
    assert stable_seed("img/001", 1) != stable_seed("img/001", 0) != stable_seed("img/002", 0)


def test_paint_hand_made():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, :4, :4] = True  # large
    masks[1, 1:3, 1:3] = True  # small, inside the large one
    labels, colours = paint(masks, np.random.default_rng(0))
    expected = np.zeros((6, 6), np.int32)
    expected[:4, :4] = 1
    expected[1:3, 1:3] = 2
    assert np.array_equal(labels, expected)
    c = np.random.default_rng(0).integers(1, 256, size=(2, 3), dtype=np.uint8)
    assert np.array_equal(colours[0, 0], c[0]) and np.array_equal(colours[1, 1], c[1])
    assert np.all(colours[5, 5] == 0)
    empty_labels, empty_colours = paint(np.zeros((0, 6, 6), bool), np.random.default_rng(0))
    assert not empty_labels.any() and not empty_colours.any()


def test_colour_map_full_size_is_nearest(proposals):
    full = proposals.colour_map_full()
    assert full.shape == (120, 160, 3)
    palette = {tuple(c) for c in proposals.colour_map.reshape(-1, 3)}
    assert {tuple(c) for c in full.reshape(-1, 3)} <= palette  # no blended colours
    assert np.array_equal(full[::2, ::2], proposals.colour_map)
    assert colour_map_to_size(proposals.colour_map, (60, 80)) is proposals.colour_map


def test_bad_image(generator):
    with pytest.raises(ValueError, match="sample k1"):
        propose(generator, np.zeros((10, 10), np.uint8), key="k1")
