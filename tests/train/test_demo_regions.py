"""Writing real-edge region samples (`jobs.make_demo_data._write_regions`): which photo and seed each
key is drawn from, and a rerun after a sample was deleted redraws the same sample."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from jobs.make_demo_data import _write_regions
from tests.train.test_regions import _scene


def _photos(tmp_path) -> list[dict]:
    flat = np.full((160, 240, 3), 128, np.uint8)  # no edges: no region passes, the next photo goes on
    pool = []
    for n, img in enumerate([_scene(1)[0], flat, _scene(2)[0]]):
        path = str(tmp_path / f"photo{n}.png")
        cv2.imwrite(path, img[..., ::-1])
        pool.append({"file": path, "path": f"photo{n}"})
    return pool


def _files(d: str) -> dict[str, bytes]:
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d)) if f.endswith(".png")}


def test_each_key_keeps_its_photo_and_seed_and_a_deleted_sample_comes_back_the_same(tmp_path):
    pool, d = _photos(tmp_path), str(tmp_path / "regions")
    kw = dict(sides=(100, 240), quality=92, per=1, stream=[0, 6], snap="local", fill_weak=False)
    sources = _write_regions(pool, d, "r", 3, **kw)
    assert sources == {"r00000": "photo0", "r00001": "photo2", "r00002": "photo0"}
    with open(os.path.join(d, "draws.json")) as f:
        assert json.load(f) == {"r00000": 0, "r00001": 2, "r00002": 3}  # j = 1 (flat) gave nothing
    before = _files(d)
    assert len(before) == 6  # _gt and _seg per key
    for suffix in ("_gt.png", "_seg.png", "_im.jpg"):
        os.remove(os.path.join(d, f"r00002{suffix}"))  # drawn from j = 3, not 2
    assert _write_regions(pool, d, "r", 3, **kw) == sources
    assert _files(d) == before  # the same photo, seed and region, byte for byte


def test_a_pool_without_any_region_stops_with_an_error_instead_of_drawing_forever(tmp_path):
    import pytest

    from jobs.make_demo_data import MAX_REGION_MISSES

    pool = _photos(tmp_path)[1:2]  # the flat photo only
    kw = dict(sides=(100, 240), quality=92, per=1, stream=[0, 6], snap="local", fill_weak=False)
    error = rf"r: no region of the last {MAX_REGION_MISSES} draws .*0 of 2 written"
    with pytest.raises(ValueError, match=error):
        _write_regions(pool, str(tmp_path / "regions"), "r", 2, **kw)
