"""Training data sources, crop dataset, the DEP-5 licence reader of the demo-data job."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from jobs.make_demo_data import _licence_for, parse_dep5
from pipeline.boundary import move_line
from pipeline.train.data import CompositeSource, ConcatSource, CropDataset, LayoutSource, image_key

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: 16.04/Bridge_by_Sander.jpg
Copyright: 2018, Sander
 and friends
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2020 Packager
License: Expat

License: GPL-2+
 long text
"""


def test_dep5_licence_lookup() -> None:
    stanzas = parse_dep5(DEP5)
    assert [s["license"] for s in stanzas] == ["GPL-2+", "CC-BY-SA-4.0", "Expat"]
    assert stanzas[1]["copyright"] == "2018, Sander and friends"
    # installed path differs from the source path: matched by basename; the last match wins
    assert _licence_for("usr/share/backgrounds/Bridge_by_Sander.jpg", stanzas) == ("2018, Sander and friends",
                                                                                   "CC-BY-SA-4.0")
    assert _licence_for("usr/share/backgrounds/other.png", stanzas) == ("2014 Someone", "GPL-2+")


@pytest.fixture()
def photos(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        p = tmp_path / f"p{i}.png"
        noise = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
        cv2.imwrite(str(p), cv2.GaussianBlur(noise, (0, 0), 2 + i))
        out.append(str(p))
    return out


def test_composite_source_is_deterministic(photos: list[str]) -> None:
    src = CompositeSource(photos, count=3, size_range=(80, 120), seed=1)
    k1, im1, gt1 = src.get(2)
    k2, im2, gt2 = CompositeSource(photos, count=3, size_range=(80, 120), seed=1).get(2)
    assert k1 == k2 and image_key(im1) == image_key(im2)
    np.testing.assert_array_equal(gt1, gt2)
    assert 80 <= max(gt1.shape) <= 120 and set(np.unique(gt1)) <= {0, 255}
    with pytest.raises(ValueError, match=">= 2 photos"):
        CompositeSource(photos[:1], count=3)


def _write_prefix(src: CompositeSource, data: Path, coarse: bool) -> str:
    """The source's samples as NAME_im.png + NAME_gt.png (+ an 8x smaller NAME_seg.png); the last key."""
    data.mkdir()
    for i in range(len(src)):
        key, im, gt = src.get(i)
        cv2.imwrite(str(data / f"{key}_im.png"), im[..., ::-1])
        if coarse:
            cv2.imwrite(str(data / f"{key}_seg.png"), gt[::8, ::8])
        cv2.imwrite(str(data / f"{key}_gt.png"), gt)
    return key


def test_layout_source_and_crops(tmp_path: Path, photos: list[str]) -> None:
    src = CompositeSource(photos, count=2, size_range=(100, 140))
    data = tmp_path / "data"
    _write_prefix(src, data, coarse=True)
    layout = LayoutSource(str(data))
    assert len(layout) == 2
    key, im, gt = layout.get(1)
    np.testing.assert_array_equal(gt, src.get(1)[2])
    both = ConcatSource([layout, src])
    assert len(both) == 4 and both.get(3)[0] == src.get(1)[0]
    ds = CropDataset(both, crop=64, seed=3)
    a, b = ds[1], ds[1]
    for k in ("image", "coarse", "gt"):
        assert a[k].dtype.is_floating_point and np.array_equal(a[k].numpy(), b[k].numpy())
    assert a["image"].shape == (3, 64, 64) and a["coarse"].shape == a["gt"].shape == (1, 64, 64)
    assert set(np.unique(a["gt"].numpy())) <= {0.0, 1.0}
    ds.set_epoch(1)
    assert not np.array_equal(ds[1]["image"].numpy(), a["image"].numpy())
    # p_truth_jitter: the truth's boundary wanders (same crop and image), 0 leaves the default items
    jit = CropDataset(both, crop=64, seed=3, p_truth_jitter=1.0)
    j = jit[1]
    assert not np.array_equal(j["gt"].numpy(), a["gt"].numpy())
    assert 0.8 < (j["gt"].numpy() == a["gt"].numpy()).mean() < 1.0
    off = CropDataset(both, crop=64, seed=3, p_truth_jitter=0.0)[1]
    assert all(np.array_equal(off[k].numpy(), a[k].numpy()) for k in ("image", "coarse", "gt"))
    # truth_jitter_kinds: only crops whose coarse kind is listed are jittered; others are the items
    # of p_truth_jitter=0 exactly (the kind draw is the same first draw)
    for i in range(4):
        plain = CropDataset(both, crop=64, seed=3, p_identity=0.0)[i]
        other = CropDataset(both, crop=64, seed=3, p_identity=0.0, p_truth_jitter=1.0,
                            truth_jitter_kinds=("identity",))[i]
        assert all(np.array_equal(other[k].numpy(), plain[k].numpy()) for k in ("image", "coarse", "gt"))
    ident = CropDataset(both, crop=64, seed=3, p_identity=1.0, p_truth_jitter=1.0,
                        truth_jitter_kinds=("identity",))
    assert not np.array_equal(ident[1]["gt"].numpy(), a["gt"].numpy())  # same crop, jittered truth
    with pytest.raises(ValueError, match="truth_jitter_kinds"):
        CropDataset(both, truth_jitter_kinds=("ident",))
    # p_truth_offset: the truth drawn 1 px outward (a 3x3 cross dilation of the same crop's truth),
    # and the coarse mask made from it: an identity crop's coarse mask is that moved truth
    moved = CropDataset(both, crop=64, seed=3, p_identity=1.0, p_truth_offset=1.0)
    for i in range(4):
        m, p = moved[i], CropDataset(both, crop=64, seed=3, p_identity=1.0)[i]
        np.testing.assert_array_equal(m["image"].numpy(), p["image"].numpy())  # same crop
        g = (p["gt"].numpy()[0] * 255).astype(np.uint8)
        np.testing.assert_array_equal(m["gt"].numpy()[0] * 255, move_line(g, 1).astype(np.float32))
    m = moved[1]
    grown = m["gt"].numpy()[0] > 0.5
    assert grown.sum() > (CropDataset(both, crop=64, seed=3, p_identity=1.0)[1]["gt"].numpy() > 0.5).sum()
    assert ((m["coarse"].numpy()[0] > 0.5) == grown).mean() > 0.97  # identity: the moved truth, or nearly
    unmoved = CropDataset(both, crop=64, seed=3, p_truth_offset=0.0)[1]  # 0: no extra draw, items as before
    assert all(np.array_equal(unmoved[k].numpy(), a[k].numpy()) for k in ("image", "coarse", "gt"))
    (data / "extra_im.png").write_bytes((data / f"{key}_im.png").read_bytes())
    (data / "extra_seg.png").write_bytes((data / f"{key}_seg.png").read_bytes())
    with pytest.raises(ValueError, match="no ground truth"):
        LayoutSource(str(data))


def test_layout_source_needs_only_image_and_truth(tmp_path: Path, photos: list[str]) -> None:
    """Training sets usually have no coarse masks: image + gt is enough, and bad truth is named."""
    from pipeline.io import SampleError

    src = CompositeSource(photos, count=2, size_range=(100, 140))
    data = tmp_path / "data"
    _write_prefix(src, data, coarse=False)
    layout = LayoutSource(str(data))
    key, im, gt = layout.get(0)
    assert key == src.get(0)[0]
    np.testing.assert_array_equal(gt, src.get(0)[2])
    np.testing.assert_array_equal(im, src.get(0)[1])
    cv2.imwrite(str(data / f"{key}_gt.png"), gt[:-3])
    with pytest.raises(SampleError, match=f"gt_size_mismatch.*{key}|{key}.*gt .* differs"):
        LayoutSource(str(data)).get(0)
