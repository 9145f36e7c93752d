"""Real-edge training regions: Felzenszwalb segments merged by colour into one object-sized region
whose boundary lies on the photo's own edges."""

from __future__ import annotations

import numpy as np

from pipeline.train.regions import grow_region, region_masks, segment_graph, segment_labels


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
    assert hits >= 1
