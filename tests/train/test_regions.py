"""Real-edge training regions: Felzenszwalb segments merged by colour into one object-sized region
whose boundary lies on the photo's own edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.sam.regions import colour_gradient
from pipeline.train.regions import (
    edge_offset,
    edge_profile,
    fill_weak_holes,
    grow_region,
    local_edge_offset,
    region_masks,
    segment_graph,
    segment_labels,
    signed_distance,
    snap_locally,
    snap_region,
    snap_to_edge,
    stronger_edge_nearby,
)


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 'photo': textured background, and an object of two similar colours (a disc and a box that
    touch) on it; returns (image, the object's exact mask)."""
    rng = np.random.default_rng(seed)
    h, w = 160, 240
    yy, xx = np.mgrid[:h, :w]
    obj = ((yy - 80) ** 2 + (xx - 90) ** 2 < 45 ** 2) | ((yy > 60) & (yy < 110) & (xx > 120) & (xx < 180))
    image = np.empty((h, w, 3), np.float32)
    image[:] = (40, 110, 60)
    image[obj] = (200, 80, 70)
    image[obj & (xx > 120)] = (215, 95, 80)  # a second, similar colour: merging must join them
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), obj


def test_segments_and_graph() -> None:
    image, obj = _scene()
    labels = segment_labels(image, scale=300, min_size=30)
    area, mean, adjacency = segment_graph(labels, image)
    assert area.sum() == obj.size and len(adjacency) == labels.max() + 1
    assert all(v in adjacency[u] for u in range(len(adjacency)) for v in adjacency[u])  # symmetric
    # every segment lies (almost) entirely inside or outside the object: boundaries follow the edges
    inside = np.bincount(labels.ravel(), weights=obj.ravel(), minlength=len(area)) / area
    assert np.all((inside < 0.05) | (inside > 0.95))


def test_grow_region_joins_similar_neighbours_and_stops_at_target() -> None:
    area = np.array([10.0, 10.0, 10.0, 10.0])
    mean = np.array([[0, 0, 0], [1, 0, 0], [50, 0, 0], [2, 0, 0]], float)
    adjacency = [{1, 2}, {0, 3}, {0}, {1}]
    region = grow_region(area, mean, adjacency, 0, 30, np.random.default_rng(0), greed=1.0)
    assert region == [0, 1, 3]


def test_region_masks_are_object_sized_and_follow_real_edges() -> None:
    image, obj = _scene(1)
    masks = region_masks(image, np.random.default_rng(0), count=6, area_range=(0.1, 0.3))
    assert 1 <= len(masks) <= 6
    hits = 0
    for m in masks:
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        frac = (m > 0).mean()
        assert 0.04 <= frac <= 0.65
        fg = m > 0
        iou = (fg & obj).sum() / (fg | obj).sum()
        hits += iou > 0.97  # the region that found the object matches it to the pixel edge
        assert abs(edge_offset(image, m)) <= 0.5  # snapped: on the edges' centre on average
        n_holes = cv2.connectedComponents((m == 0).astype(np.uint8), connectivity=4)[0] - 2
        n_parts = cv2.connectedComponents((m > 0).astype(np.uint8), connectivity=4)[0] - 1
        assert n_parts == 1 and n_holes <= 0  # one piece, no pinholes (this scene has no openings)
    assert hits >= 1
    for i, a in enumerate(masks):  # two seeds growing the same region give one sample, not two
        for b in masks[:i]:
            assert ((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum() <= 0.9
    # no holes here, so filling weak ones (opt-in) changes nothing
    filled = region_masks(image, np.random.default_rng(0), count=6, area_range=(0.1, 0.3), fill_weak=True)
    assert len(filled) == len(masks) and all(np.array_equal(a, b) for a, b in zip(filled, masks))


def test_fill_weak_holes_keeps_real_openings_and_fills_texture_patches() -> None:
    """A ring-shaped object on a flat background: its opening shows the background through a
    strong edge and stays; a patch of faint shading inside the object that the region skipped
    (a hole with a weak boundary) is filled."""
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    obj = (np.abs(yy - 60) < 50) & (np.abs(xx - 80) < 70)
    opening = (np.abs(yy - 60) < 12) & (np.abs(xx - 45) < 12)
    patch = (np.abs(yy - 60) < 10) & (np.abs(xx - 115) < 10)
    image = np.empty((h, w, 3), np.float32)
    image[:] = (30, 90, 160)
    image[obj & ~opening] = (200, 80, 40)
    image[patch] = (204, 82, 42)  # faint shading: nearly the object's own colour
    image = np.clip(image + np.random.default_rng(0).normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    region = obj & ~opening & ~patch
    out = fill_weak_holes(region, colour_gradient(image), 2.5)
    assert np.array_equal(out, obj & ~opening)
    assert np.array_equal(fill_weak_holes(obj, colour_gradient(image), 2.5), obj)  # no holes: unchanged


def test_snap_region_snaps_then_drops_specks_and_pinholes() -> None:
    image = _blurred_disc(40.0)
    shifted = _disc(39.0)
    shifted[10:12, 10:12] = 255  # a speck far from the disc
    shifted[64, 64] = 0  # a pinhole in its middle
    out, left = snap_region(image, shifted)
    assert abs(left) <= 0.4 and (out != _disc(40.0)).mean() < 0.01
    assert out[10:12, 10:12].max() == 0 and out[64, 64] == 255
    with pytest.raises(ValueError, match="snap must be one of"):
        snap_region(image, shifted, "nearest")


def _blurred_disc(radius: float = 40.0, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) < radius
    img = np.where(inside[..., None], np.array([200, 80, 40]), np.array([30, 90, 160])).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 255).astype(np.uint8)


def _disc(radius: float, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.where(np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) < radius, 255, 0).astype(np.uint8)


def test_edge_offset_finds_where_the_edge_lies_relative_to_the_mask():
    image = _blurred_disc(40.0)
    assert abs(edge_offset(image, _disc(40.0))) < 0.1  # the truth: on the edge's centre
    assert edge_offset(image, _disc(38.0)) == pytest.approx(2.0, abs=0.2)  # too small: edge outside
    assert edge_offset(image, _disc(39.0)) == pytest.approx(1.0, abs=0.2)
    assert edge_offset(image, _disc(41.0)) == pytest.approx(-1.0, abs=0.2)  # too large: edge inside
    # a straight edge between two colours: symmetric, whichever side the mask is
    half = np.zeros((64, 64, 3), np.float32)
    half[:, :32], half[:, 32:] = (200, 80, 40), (30, 90, 160)
    half = np.clip(cv2.GaussianBlur(half, (0, 0), 1.2), 0, 255).astype(np.uint8)
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    assert abs(edge_offset(half, left)) < 0.05 and abs(edge_offset(half, 255 - left)) < 0.05
    p = edge_profile(image, _disc(40.0), radius=3)
    assert p.shape == (7,) and int(np.argmax(p)) == 3 and p[3] > 3 * p[0]
    assert np.isnan(edge_offset(image, np.zeros((128, 128), np.uint8)))


def test_a_boundary_on_a_weak_edge_beside_a_strong_one_is_no_truth():
    # a faint step at column 30 (the boundary of ``left``) and a sharp one 5 px out, at column 35
    img = np.zeros((64, 64, 3), np.float32)
    img[:, :30], img[:, 30:35], img[:, 35:] = (100, 100, 100), (110, 110, 110), (240, 60, 60)
    img = img.astype(np.uint8)
    left = np.zeros((64, 64), np.uint8)
    left[:, :30] = 255
    assert stronger_edge_nearby(img, left)  # the object's real edge runs 5 px beside it
    on = np.zeros((64, 64), np.uint8)
    on[:, :35] = 255
    assert not stronger_edge_nearby(img, on)  # on the strong edge: the faint one is 5 px inside
    image = _blurred_disc(40.0)
    assert not stronger_edge_nearby(image, _disc(40.0))
    assert stronger_edge_nearby(image, _disc(35.0))  # 5 px inside a disc's only edge
    assert not stronger_edge_nearby(image, np.zeros((128, 128), np.uint8))  # no boundary


def test_signed_distance_moves_the_boundary_by_whole_pixels():
    m = _disc(20.0, 64)
    d = signed_distance(m)
    assert np.array_equal(d < 0, m > 0)
    ring = np.round(np.unique(d[np.abs(d) < 1]), 3)
    assert {-0.5, 0.5} <= set(ring.tolist()) and np.abs(ring).min() == 0.5  # no pixel on the boundary
    area = lambda r: int((_disc(r, 64) > 0).sum())  # noqa: E731
    grown, shrunk = d < 1, d < -1  # the boundary one pixel out / in (up to the pixel grid)
    assert np.all(grown >= (m > 0)) and area(21.0) <= grown.sum() <= area(21.5)
    assert np.all(shrunk <= (m > 0)) and area(18.5) <= shrunk.sum() <= area(19.0)


def test_snap_to_edge_puts_a_shifted_truth_back_on_the_edge():
    image = _blurred_disc(40.0)
    truth = _disc(40.0)
    for radius in (38.0, 39.0, 41.0, 42.0):
        snapped, left = snap_to_edge(image, _disc(radius))
        assert abs(left) <= 0.4 and set(np.unique(snapped)) <= {0, 255}
        assert (snapped != truth).mean() < 0.01  # back to the true disc up to its rim
    same, left = snap_to_edge(image, truth)
    assert np.array_equal(same, truth) and abs(left) < 0.1  # a truth on the edge is kept as is
    far, left = snap_to_edge(image, _disc(44.0), max_shift=2)  # moves at most max_shift
    assert left < -0.5


def test_local_edge_offset_measures_each_stretch_of_the_boundary():
    image = _blurred_disc(40.0)
    for radius, want in ((38.0, 2.0), (39.0, 1.0), (40.0, 0.0), (41.0, -1.0)):
        offset, clear = local_edge_offset(image, _disc(radius))
        ring = np.abs(signed_distance(_disc(radius))) < 1
        assert clear[ring].all()
        assert np.abs(offset[ring] - want).max() < 0.3, radius
    # half of the disc's rim has no edge (inside colour on both sides): clear only on the other half
    flat = image.copy()
    flat[:, 72:] = image[64, 64]
    offset, clear = local_edge_offset(flat, _disc(39.0))
    ring = np.abs(signed_distance(_disc(39.0))) < 1
    left, right = ring.copy(), ring.copy()
    left[:, 56:], right[:, :88] = False, False  # away from the seam at column 72
    assert clear[left].all() and np.abs(offset[left] - 1.0).max() < 0.3
    assert not clear[right].any() and np.all(offset[right] == 0)


def test_snap_locally_moves_only_the_stretches_that_have_an_edge():
    image = _blurred_disc(40.0)
    truth = _disc(40.0)
    for radius in (38.0, 39.0, 41.0, 42.0):  # a clear edge all round: back onto it, like snap_to_edge
        snapped, left = snap_locally(image, _disc(radius))
        assert abs(left) <= 0.4 and set(np.unique(snapped)) <= {0, 255}
        assert (snapped != truth).mean() < 0.01
    same, _ = snap_locally(image, truth)
    assert np.array_equal(same, truth)
    # no edge on the right half: the global snap grows the whole disc, the local one only the left
    flat = image.copy()
    flat[:, 72:] = image[64, 64]
    small = _disc(39.0)
    local, _ = snap_locally(flat, small)
    whole, _ = snap_to_edge(flat, small)
    grown = lambda m, cols: int(((m > 0) & (small == 0))[:, cols].sum())  # noqa: E731
    assert grown(local, slice(0, 56)) > 60 and grown(whole, slice(0, 56)) > 60
    assert grown(local, slice(88, None)) <= 2 < 30 < grown(whole, slice(88, None))
    assert np.all((local > 0) >= (small > 0))  # moved outward only


def test_snap_region_folder_rewrites_truth_and_links_images(tmp_path) -> None:
    from jobs.make_demo_data import snap_region_folder

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    image = _blurred_disc(40.0)
    cv2.imwrite(str(src / "a_im.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    shifted = _disc(39.0)
    shifted[64, 64] = 0  # a pinhole: cleaned away with the snap
    cv2.imwrite(str(src / "a_gt.png"), shifted)
    cv2.imwrite(str(src / "b_im.jpg"), np.zeros((128, 128, 3), np.uint8))  # no edge anywhere: dropped
    cv2.imwrite(str(src / "b_gt.png"), _disc(30.0))
    counts = snap_region_folder(str(src), str(dst))
    assert counts == {"kept": 1, "moved": 1, "dropped": 1}
    gt = cv2.imread(str(dst / "a_gt.png"), cv2.IMREAD_GRAYSCALE)
    assert (gt != _disc(40.0)).mean() < 0.01 and gt[64, 64] == 255
    assert (dst / "a_im.jpg").read_bytes() == (src / "a_im.jpg").read_bytes()
    assert cv2.imread(str(dst / "a_seg.png"), cv2.IMREAD_GRAYSCALE).shape == (16, 16)
    assert not (dst / "b_gt.png").exists()
