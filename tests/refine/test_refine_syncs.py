"""No host-device sync per tile: the streamed decoder's tile loop never reads the device back.

Counted with :class:`tests.syncs.SyncCounter` (the calls that would wait for a GPU): one
`refine` call makes a fixed number of them, whatever the number of tiles.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.refine import RefineOptions, prepare_model, refine
from pipeline.refine.geometry import axis_table, lerp_table
from pipeline.refine.tiles import StreamFeatures, owned_bounds
from tests.syncs import SyncCounter


def _case(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(h * w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coarse = np.zeros((h, w), np.uint8)
    coarse[h // 4 : 3 * h // 4, w // 5 : 3 * w // 4] = 255
    return image, coarse


def _count(model, options: RefineOptions, h: int, w: int, monkeypatch) -> tuple[int, int, str]:
    """(sync points, feature tiles computed, where the syncs are) of one refine call."""
    tiles = []
    original = StreamFeatures.tile

    def counting_tile(self, *args):
        tiles.append(args)
        return original(self, *args)

    monkeypatch.setattr(StreamFeatures, "tile", counting_tile)
    image, coarse = _case(h, w)
    with SyncCounter() as syncs:
        refine(prepare_model(model, options), image, coarse, options=options)
    monkeypatch.undo()
    return syncs.count, len(tiles), syncs.summary()


@pytest.mark.parametrize("decode, limit", [("full", 20), ("strided", 40), ("contour", 32)])
def test_sync_points_do_not_grow_with_the_tiles(random_mnv2, monkeypatch, decode, limit):
    options = replace(RefineOptions(), tile=24, decode=decode)  # the default streamed decoder
    few, few_tiles, where = _count(random_mnv2, options, 64, 80, monkeypatch)
    many, many_tiles, where_many = _count(random_mnv2, options, 160, 224, monkeypatch)
    assert many_tiles > 1.8 * few_tiles > 0  # many more tiles ...
    assert many == few, f"{few} syncs: {where}; {many} syncs: {where_many}"  # ... the same syncs
    assert few <= limit, where


def test_sync_counter_sees_each_kind_of_read_back():
    t = torch.arange(6.0)
    with SyncCounter() as syncs:
        t[1].item(), int(t[2]), float(t[3]), bool(t[4]), t.tolist(), t.nonzero(), t.cpu(), t.numpy()
        torch.tensor(3, device=t.device), t.to(t.device), t[t > 2], t.to(torch.float64)
    names = sorted(name for name, _ in syncs.calls)
    assert names == sorted(["item", "__int__", "__float__", "__bool__", "tolist", "nonzero", "cpu", "numpy",
                            "tensor(device=)", "to(device)", "__getitem__[bool mask]"])
    assert syncs.count == 11  # the dtype-only .to() is no transfer


@pytest.mark.parametrize("n_query, n_feat, step", [(75, 38, 4), (512, 64, 7), (389, 49, 5), (10, 80, 4)])
def test_owned_bounds_equal_a_search_per_tile(n_query, n_feat, step):
    table = axis_table(n_query, n_feat, "cpu")
    bounds = owned_bounds(table, step)
    low = table.index[0]
    expected = [int(torch.searchsorted(low, torch.tensor(r0))) for r0 in range(0, n_feat + step, step)]
    assert bounds == expected[: len(bounds)]
    assert len(bounds) == -(-n_feat // step) + 1 and bounds[0] == 0 and bounds[-1] == n_query


@pytest.mark.parametrize("n_in, n_out", [(7, 100), (38, 75), (97, 389), (383, 1501), (5, 5), (1, 9), (9, 1)])
def test_lerp_table_uses_torch_float32_scale(n_in, n_out):
    """Host-side scale, same numbers as torch's float32 (n_in-1)/(n_out-1) on the device."""
    scale = torch.tensor(float(n_in - 1)) / (n_out - 1) if n_out > 1 else torch.zeros(())
    x = torch.randn(1, 1, n_in, 1, generator=torch.Generator().manual_seed(n_in))
    full = F.interpolate(x, size=(n_out, 1), mode="bilinear", align_corners=True)[0, 0, :, 0]
    for start, stop in ((0, n_out), (n_out // 3, min(n_out, n_out // 3 + 5))):
        i0, i1, lam = lerp_table(n_out, n_in, start, stop, "cpu")
        src = torch.arange(start, stop, dtype=torch.float32) * scale
        assert torch.equal(i0, src.floor().long().clamp(0, n_in - 1))
        assert torch.equal(i1, (i0 + 1).clamp(max=n_in - 1))
        assert torch.equal(lam, src - i0.float())
        top, bottom = x[0, 0, i0, 0], x[0, 0, i1, 0]
        torch.testing.assert_close(top + (bottom - top) * lam, full[start:stop], rtol=0, atol=1e-6)
