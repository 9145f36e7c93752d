"""Fixtures for refiner tests: golden-format weights/inputs and small random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.io.weights import read_state_dict
from pipeline.models import build_model, load_weights
from tests.helpers import randomise_bn
from tests.refine._golden import GOLDEN_DIR, read_golden


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread: the 2-core CI machine is shared, and spinning OpenMP threads
    of an oversubscribed process make small convolutions over 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def golden_crm() -> nn.Module:
    """crm_r50 with the golden (random, BN-calibrated) official-format weights."""
    state = read_state_dict(str(GOLDEN_DIR / "weights_official_format.pt.gz"))
    return load_weights(build_model("crm_r50"), state, source="golden")


@pytest.fixture(scope="session")
def small_case() -> tuple[np.ndarray, np.ndarray]:
    """A 75x101 crop of the small golden input (odd sizes) with its coarse mask."""
    image, coarse, _ = read_golden("g389x517")
    return np.ascontiguousarray(image[40:115, 80:181]), np.ascontiguousarray(coarse[40:115, 80:181])


@pytest.fixture(scope="session")
def random_mnv2() -> nn.Module:
    """crm_mnv2 with random weights and BN statistics, outputs straddling 0.5 on `small_case`."""
    torch.manual_seed(3)
    model = build_model("crm_mnv2")
    randomise_bn(model, seed=4, weight=(0.5, 1.0))
    with torch.no_grad():
        # default Linear init gives near-constant outputs: widen, then centre on 0.5
        for layer in model.imnet.layers:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(3)
        model.imnet.layers[-1].bias.sub_(0.8)
    return model.eval()
