"""Edge check (`RefineOptions.edge_check`, `pipeline.refine.edgecheck`): a refined change is kept
only where the refined line crosses a stronger colour contrast than the coarse line did."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.refine import RefineOptions, refine
from pipeline.refine.edgecheck import edge_check, line_contrast


def _disc_image(h: int = 96, w: int = 128, radius: int = 30, seed: int = 0) -> np.ndarray:
    """A dark disc on a light background (a sharp edge at ``radius``), a little noise."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 200.0)
    yy, xx = np.mgrid[:h, :w]
    image[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2] = (40.0, 60.0, 90.0)
    return np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


def _disc(h: int = 96, w: int = 128, radius: float = 30) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2


def test_line_contrast_by_hand() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[:, 1:] = (3, 4, 0)  # contrast 5 between column 0 and 1, 0 elsewhere
    image[1, 2] = (3, 4, 12)  # contrast 12 between (1, 1) and (1, 2), 12 between (0, 2) and (1, 2)
    mask = np.array([[1, 0, 0], [1, 0, 1]], bool)
    total, count = line_contrast(mask, image)
    # line pairs: (0,0)-(0,1): 5; (1,0)-(1,1): 5; (1,1)-(1,2): 12; (0,2)-(1,2): 12
    np.testing.assert_allclose(total, [[5, 5, 12], [5, 17, 24]])
    np.testing.assert_allclose(count, [[1, 1, 1], [1, 2, 2]])


def test_line_credits_gathered_equal_the_dense_maps() -> None:
    """line_credits at a set of box positions: the same float32 sums and counts as the dense
    per-pixel maps over the box (pairs leaving the box not counted), bit for bit."""
    from pipeline.refine.edgecheck import _credit, _pair_contrast, line_credits

    rng = np.random.default_rng(3)
    h, w = 40, 50
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    before, after = rng.random((h, w)) > 0.5, rng.random((h, w)) > 0.4
    r0, r1, c0, c1 = 5, 33, 0, 47  # a box touching the image's left side
    box = (slice(r0, r1), slice(c0, c1))
    where = np.flatnonzero(rng.random((r1 - r0, c1 - c0)) > 0.6)
    at = (where // (c1 - c0) + r0, where % (c1 - c0) + c0)
    got = line_credits(image, before, after, at, (r0, c0, r1, c1))
    horizontal, vertical = _pair_contrast(image[box])
    b, a = before[box], after[box]
    want = (_credit(horizontal, vertical, b[:, 1:] != b[:, :-1], b[1:] != b[:-1]),
            _credit(horizontal, vertical, a[:, 1:] != a[:, :-1], a[1:] != a[:-1]),
            _credit(horizontal, vertical, None, None))
    for (total, count), (wt, wc) in zip(got, want):
        assert total.dtype == np.float32 and count.dtype == np.uint8
        np.testing.assert_array_equal(total, wt.ravel()[where])
        np.testing.assert_array_equal(count, wc.ravel()[where])


def _dense_edge_check(prob, coarse, image, margin, grow=1):
    """The first implementation (dense credit maps over the box, float64 labels), as a reference."""
    from pipeline.refine.edgecheck import _credit, _pair_contrast
    from tests.helpers import region_means

    before, after = coarse > 0.5, prob > 0.5
    changed = before != after
    rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
    pad = grow + 1
    r0, r1 = max(0, rows[0] - pad), min(prob.shape[0], rows[-1] + pad + 1)
    c0, c1 = max(0, cols[0] - pad), min(prob.shape[1], cols[-1] + pad + 1)
    box = (slice(r0, r1), slice(c0, c1))
    img, b, a = image[box], before[box], after[box]
    horizontal, vertical = _pair_contrast(img)
    old = _credit(horizontal, vertical, b[:, 1:] != b[:, :-1], b[1:] != b[:-1])
    new = _credit(horizontal, vertical, a[:, 1:] != a[:, :-1], a[1:] != a[:-1])
    every = _credit(horizontal, vertical, None, None)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    undone = 0
    for part in (a & ~b, b & ~a):
        n, labels = cv2.connectedComponents(part.astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        region = cv2.dilate(labels.astype(np.float64), kernel).astype(np.int64)
        inside = labels > 0
        region[inside] = labels[inside]
        where = np.flatnonzero(region)
        old_mean, old_n = region_means(region, where, n, *old)
        new_mean, new_n = region_means(region, where, n, *new)
        any_mean, _ = region_means(region, where, n, *every)
        keep = np.where((old_n > 0) & (new_n > 0), new_mean >= old_mean * (1 + margin),
                        np.where(new_n > 0, new_mean >= any_mean * (1 + margin),
                                 old_mean <= any_mean * (1 + margin)))
        keep[0] = True
        undo = ~keep[labels] & part
        if undo.any():
            sub = prob[box]
            sub[undo] = coarse[box][undo]
            undone += int((~keep[1:]).sum())
    return undone


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_edge_check_equals_the_dense_computation(seed) -> None:
    """On noisy changes (hundreds of them, some touching the image's border) the edge check undoes
    the same changes, to the pixel, as the dense first implementation."""
    rng = np.random.default_rng(seed)
    h, w, radius = (700, 500, 240) if seed == 3 else (96, 128, 30)  # 700 rows: several strips
    image = _disc_image(h, w, radius, seed=seed)
    image = np.clip(image.astype(np.int16) + rng.integers(-40, 40, image.shape), 0, 255).astype(np.uint8)
    coarse = _disc(h, w, radius).astype(np.float32)
    prob = np.clip(coarse + rng.normal(0, 0.4, coarse.shape), 0, 1).astype(np.float32)
    prob[:3] = 1.0
    got, want = prob.copy(), prob.copy()
    n_got = edge_check(got, coarse, image, 0.25, grow=1 + seed % 2)
    n_want = _dense_edge_check(want, coarse, image, 0.25, grow=1 + seed % 2)
    assert n_got == n_want > 10
    np.testing.assert_array_equal(got, want)


def test_a_line_moved_off_the_edge_is_put_back() -> None:
    image = _disc_image()
    coarse = _disc(radius=30).astype(np.float32)  # on the edge
    refined = np.where(_disc(radius=28), 0.9, 0.1).astype(np.float32)  # eroded 2 px into the disc
    prob = refined.copy()
    assert edge_check(prob, coarse, image, margin=0.25) == 1
    ring = (coarse > 0.5) & (refined <= 0.5)
    np.testing.assert_array_equal(prob, np.where(ring, coarse, refined))  # only the ring undone


def test_a_line_moved_onto_the_edge_is_kept() -> None:
    image = _disc_image()
    coarse = _disc(radius=27).astype(np.float32)  # 3 px inside the edge: crosses flat colour
    refined = np.where(_disc(radius=30), 0.8, 0.2).astype(np.float32)
    prob = refined.copy()
    assert edge_check(prob, coarse, image, margin=0.25) == 0
    np.testing.assert_array_equal(prob, refined)


def test_each_change_is_judged_alone_and_islands_by_the_region() -> None:
    """Left half of the disc moved off the edge (undone), right half moved onto it (kept); a
    spurious coarse island on flat background removed (kept: no edge under its line), a refined
    island on flat background (undone: its line crosses no stronger contrast than the region)."""
    h, w = 96, 128
    image = _disc_image(h, w)
    xx = np.mgrid[:h, :w][1]
    on_edge, inside = _disc(h, w, 30), _disc(h, w, 27)
    coarse = np.where(xx < w // 2, on_edge, inside)
    refined = np.where(xx < w // 2, inside, on_edge)
    coarse[5:9, 5:9] = True  # island of the coarse mask on flat background
    refined[80:84, 5:9] = True  # island the refiner adds on flat background
    coarse_f, prob = coarse.astype(np.float32), refined.astype(np.float32)
    undone = edge_check(prob, coarse_f, image, margin=0.25)
    want = refined.copy()
    want[xx < w // 2] = coarse[xx < w // 2]
    want[5:9, 5:9] = False  # the coarse island's removal stays
    want[80:84, 5:9] = False  # the refiner's island goes
    assert undone == 2
    np.testing.assert_array_equal(prob > 0.5, want)


def test_margin_zero_keeps_ties_and_checks_its_inputs() -> None:
    image = np.full((20, 20, 3), 128, np.uint8)  # flat: every contrast is 0
    coarse = np.zeros((20, 20), np.float32)
    coarse[5:15, 5:15] = 1
    prob = np.zeros((20, 20), np.float32)
    prob[6:14, 6:14] = 0.7
    kept = prob.copy()
    assert edge_check(prob, coarse, image, margin=0.0) == 0  # no evidence either way: the change stays
    np.testing.assert_array_equal(prob, kept)
    assert edge_check(prob, prob.copy(), image, margin=0.0) == 0  # nothing changed
    with pytest.raises(ValueError, match="shapes differ"):
        edge_check(prob, coarse[:10], image, 0.25)
    with pytest.raises(ValueError, match="must be >= 0"):
        edge_check(prob, coarse, image, -0.1)


def test_refine_applies_it_after_the_gate(random_mnv2, small_case) -> None:
    image, coarse = small_case
    options = RefineOptions(scales=(1.0,), tta="rot180", gate=0.05)
    plain = refine(random_mnv2, image, coarse, options=options)
    checked = refine(random_mnv2, image, coarse, options=replace(options, edge_check=0.0))
    want = plain.copy()
    undone = edge_check(want, coarse.astype(np.float32) / 255, image, 0.0)
    np.testing.assert_array_equal(checked, want)
    # the random model's changes that survive the gate are judged: some undone, some kept
    assert undone > 0 and ((checked > 0.5) != (coarse > 127)).sum() > 0
    small = np.ascontiguousarray(coarse[::2, ::2])  # a coarse mask of another size is resized first
    out = refine(random_mnv2, image, small, options=replace(options, edge_check=0.0))
    assert out.shape == coarse.shape


def test_option_and_config_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="edge_check"):
        RefineOptions(edge_check=-1.0)
    assert RefineOptions(edge_check=0.25).edge_check == 0.25 and RefineOptions().edge_check is None
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {uri: x}\noutput: {prefix: y}\nrefine: {options: {edge_check: -1}}\n")
    with pytest.raises(ValueError, match="refine.options.*edge_check"):
        load_config(str(cfg))


def test_it_helps_a_moved_disc_end_to_end() -> None:
    """With a real image edge, a coarse line 3 px off it, and a 'refiner' that both fixes that and
    shifts the good half: the check keeps the fix, undoes the shift (measured by IoU)."""
    image = _disc_image(radius=30)
    truth = _disc(radius=30)
    xx = np.mgrid[:96, :128][1]
    coarse = np.where(xx < 64, truth, _disc(radius=27))
    refined = np.where(xx < 64, _disc(radius=28), truth)
    prob = refined.astype(np.float32)
    edge_check(prob, coarse.astype(np.float32), image, 0.25)

    def iou(m: np.ndarray) -> float:
        return float((m & truth).sum() / (m | truth).sum())

    assert iou(prob > 0.5) == 1.0 > iou(refined) and iou(prob > 0.5) > iou(coarse)
    assert cv2.countNonZero((prob > 0.5).astype(np.uint8)) == int(truth.sum())
