"""Refinement reports its progress: the work counter the job's watchdog relies on
(``pipeline.refine.heartbeat``, read by ``pipeline.runner.progress.WorkBeat``) moves during one
refine call, more for a larger image, with every decoder and with the tiled encoder."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.refine import RefineOptions, prepare_model, refine
from pipeline.refine.heartbeat import ticks


def _ticks_of_one_refine(model, options: RefineOptions, h: int, w: int) -> int:
    rng = np.random.default_rng(h + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coarse = np.zeros((h, w), np.uint8)
    coarse[h // 4 : 3 * h // 4, w // 5 : 3 * w // 4] = 255
    before = ticks()
    refine(prepare_model(model, options), image, coarse, options=options)
    return ticks() - before


@pytest.mark.parametrize("options", [
    replace(RefineOptions(), tile=24),  # streamed decoder, full
    replace(RefineOptions(), tile=24, decode="strided"),
    replace(RefineOptions(), tile=24, tile_encoder=64),  # tiled encoder
])
def test_a_refine_call_ticks_and_a_larger_image_ticks_more(random_mnv2, options):
    small = _ticks_of_one_refine(random_mnv2, options, 64, 80)
    large = _ticks_of_one_refine(random_mnv2, options, 200, 240)
    assert 0 < small < large
