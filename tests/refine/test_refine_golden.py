"""Our CRM computes the official function: golden outputs of the official implementation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.refine import RefineOptions, prepare_model, refine
from tests.refine._golden import read_golden

TOLERANCE = 1e-4


@pytest.mark.parametrize("name", ["g389x517", "g800x600"])
def test_optimised_cascade_matches_official_golden(golden_crm, name):
    image, coarse, official = read_golden(name)
    options = RefineOptions()  # every exact optimisation on
    prob = refine(prepare_model(golden_crm, options), image, coarse, options=options)
    assert prob.shape == official.shape and prob.dtype == np.float32
    assert np.abs(prob - official).max() <= TOLERANCE
    assert 0.05 < (official > 0.5).mean() < 0.95  # the golden output straddles 0.5


def test_official_style_cascade_matches_official_golden(golden_crm):
    image, coarse, official = read_golden("g389x517")
    prob = refine(golden_crm, image, coarse, options=RefineOptions.official())
    assert np.abs(prob - official).max() <= TOLERANCE
