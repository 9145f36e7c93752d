"""Mixed precision (RefineOptions.precision): bf16 autocast against fp32 on the golden inputs.

CPU autocast runs bfloat16 convolutions and matmuls, so the parity that CUDA gets is checked
here without a GPU: binary agreement with the fp32 output and max |diff| (printed).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.refine import RefineOptions, prepare_model, refine
from pipeline.refine.options import options_for_device, resolve_precision
from tests.refine._golden import read_golden

WEIGHTS = Path(__file__).resolve().parents[2] / "pipeline" / "weights" / "crm_mnv2.pt"


def _compare(fp32: np.ndarray, low: np.ndarray, what: str) -> tuple[float, float]:
    assert low.dtype == np.float32 and low.shape == fp32.shape
    agreement = float(((low > 0.5) == (fp32 > 0.5)).mean())
    diff = float(np.abs(low - fp32).max())
    print(f"{what}: bf16 vs fp32 binary agreement {agreement:.5f}, max |diff| {diff:.4f}, "
          f"mean |diff| {float(np.abs(low - fp32).mean()):.5f}")
    return agreement, diff


@pytest.fixture(scope="module")
def shipped_mnv2():
    from pipeline.models import build_model

    return prepare_model(build_model("crm_mnv2", checkpoint=str(WEIGHTS)).eval(), RefineOptions())


# windows of the golden inputs that hold mask boundary: this CPU has no native bfloat16 (autocast
# emulates it, 65x slower than fp32 for crm_r50), so the whole inputs would take minutes
WINDOWS = {"g389x517": (slice(40, 232), slice(64, 320)), "g800x600": (slice(150, 406), slice(250, 506))}


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_bf16_agrees_with_fp32_trained_weights(shipped_mnv2, name):
    """The shipped (trained) light CRM on windows of the golden inputs: >= 99.9% of pixels agree
    at the demo settings (one scale, align 8); through the 4-scale cascade, where differences of
    the low scales propagate, >= 99.5% (on the whole inputs: 99.96% / 99.98% at one scale,
    99.80% / 99.88% through the cascade)."""
    image, coarse, _ = read_golden(name)
    rows, cols = WINDOWS[name]
    image, coarse = np.ascontiguousarray(image[rows, cols]), np.ascontiguousarray(coarse[rows, cols])
    assert 0.05 < (coarse > 127).mean() < 0.95
    for scales, floor in (((1.0,), 0.999), ((0.125, 0.25, 0.5, 1.0), 0.995)):
        options = RefineOptions(scales=scales, align=8)
        fp32 = refine(shipped_mnv2, image, coarse, options=options)
        bf16 = refine(shipped_mnv2, image, coarse, options=replace(options, precision="bf16"))
        agreement, diff = _compare(fp32, bf16, f"{name} window, crm_mnv2, scales {list(scales)}")
        assert agreement >= floor and diff > 0  # autocast did run in bf16 (not bit-identical)


def test_coordinate_terms_stay_fp32_under_autocast(random_mnv2, small_case):
    """The factorised decoder adds the coordinate terms to a float32 feature part, so the
    probabilities of bf16 differ from fp32 only through the convolutions and MLP."""
    image, coarse = small_case
    fp32 = refine(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,)))
    bf16 = refine(random_mnv2, image, coarse, options=RefineOptions(scales=(1.0,), precision="bf16"))
    assert ((bf16 > 0.5) == (fp32 > 0.5)).mean() >= 0.99 and np.abs(bf16 - fp32).max() > 0


@pytest.mark.parametrize("options", [
    RefineOptions(scales=(0.5, 1.0), precision="bf16", factorize_decoder=False, tile=48),  # streamed
    RefineOptions.official(scales=(0.5, 1.0), precision="bf16", query_chunk=2048),  # CRMNet.query
], ids=["tiles", "official"])
def test_non_factorised_decoders_keep_the_coordinates_fp32(random_mnv2, small_case, options):
    """Under bf16 autocast the decoders' first layer (which sees the LIIF coordinates) computes
    in float32, exactly as without autocast, on the float32 coordinates."""
    image, coarse = small_case
    first = random_mnv2.imnet.layers[0]
    seen = []

    def check(module, args, output):
        x = args[0]
        seen.append((x.dtype, output.dtype))
        if len(seen) <= 3:  # the same numbers as the float32 layer
            with torch.autocast("cpu", enabled=False):
                assert torch.equal(output, torch.nn.functional.linear(x.float(), module.weight, module.bias))

    handle = first.register_forward_hook(check)
    try:
        refine(random_mnv2, image, coarse, options=options)
    finally:
        handle.remove()
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen), set(seen)


def test_precision_resolution():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    if torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") in ("bf16", "fp16")
    options = options_for_device({"scales": (1.0,), "precision": "auto"}, "cpu")
    assert options.precision == "fp32" and options.scales == (1.0,)
    with pytest.raises(ValueError, match="precision"):
        RefineOptions(precision="fp8")


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_precision_follows_the_cards_compute_capability(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16 (``is_bf16_supported`` says True there): fp16; A100 /
    H100 (8.x / 9.x) have it natively: bf16. The card asked for is the one looked at."""
    seen = []

    def capability_of(index):
        seen.append(index)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_precision("auto", "cuda:1") == expected and seen == [1]
    assert resolve_precision("auto", "cuda") == expected and seen == [1, 0]
    assert resolve_precision("fp32", "cuda:1") == "fp32"
