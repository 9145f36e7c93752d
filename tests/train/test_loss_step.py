"""Loss terms, the exact space-to-batch convolution, and one training step on a fixed batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.train.fastconv import SpaceToBatchConv2d, use_space_to_batch
from pipeline.train.loss import LossWeights, refine_loss, sobel
from pipeline.train.step import forward_crops, patch_origins, train_step


def test_loss_terms_and_weights() -> None:
    gt = torch.zeros(2, 1, 16, 16)
    gt[:, :, 4:12, 4:12] = 1
    perfect = (gt * 2 - 1) * 50.0
    total, parts = refine_loss(perfect, gt)
    assert total.item() < 1e-6 and parts["grad"] < 1e-6
    total, parts = refine_loss(torch.zeros_like(gt), gt)
    assert parts["l1"] == pytest.approx(0.5) and parts["mse"] == pytest.approx(0.25)
    assert parts["bce"] == pytest.approx(np.log(2), rel=1e-5)
    assert LossWeights() == LossWeights(bce=0.0, l1=1.0, mse=1.0, grad=5.0)  # CRM's published weights
    expect = parts["l1"] + parts["mse"] + 5.0 * parts["grad"]
    assert parts["total"] == pytest.approx(expect, rel=1e-5)
    w = LossWeights.parse("0,1,0,0")
    assert refine_loss(torch.zeros_like(gt), gt, w)[1]["total"] == pytest.approx(0.5)
    assert sobel(torch.ones(1, 1, 8, 8)).max() == pytest.approx(1e-2)  # sqrt(eps), eps = 1e-4
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1
    g = sobel(step)[0, 0, 4]  # box average first: the edge spreads over 4 columns (Sobel 3 x box 3)
    assert g[2].item() == pytest.approx(np.sqrt((4 / 3) ** 2 + 1e-4), rel=1e-5)
    assert g[3].item() == pytest.approx(np.sqrt((8 / 3) ** 2 + 1e-4), rel=1e-5)
    assert g[0].item() == pytest.approx(1e-2) and g[7].item() == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="loss weights"):
        LossWeights.parse("1,2")


def test_space_to_batch_is_exact() -> None:
    torch.manual_seed(0)
    model = build_model("crm_mnv2").train()
    fast = copy.deepcopy(model)
    assert use_space_to_batch(fast) > 0
    assert any(isinstance(m, SpaceToBatchConv2d) for m in fast.modules())
    assert list(fast.state_dict()) == list(model.state_dict())
    model.eval(), fast.eval()
    x = torch.randn(1, 4, 45, 38)  # odd sizes: padding path
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(x), model.encode(x), atol=1e-5, rtol=1e-4)


def _batch(seed: int, n: int = 2, s: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(n, 1, s, s)
    gt[:, :, s // 4: 3 * s // 4, s // 5: s // 2 + 7] = 1
    image = torch.rand(n, 3, s, s, generator=g) * 0.3 + gt * 0.5
    coarse = torch.nn.functional.avg_pool2d(gt, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)
    return {"image": image, "coarse": coarse, "gt": gt}


def test_patch_queries_match_full_decoding() -> None:
    torch.manual_seed(0)
    model = build_model("crm_mnv2").eval()
    batch = _batch(0)
    origins = patch_origins(batch["gt"], 16, 2, np.random.default_rng(0))
    assert origins.shape == (2, 2, 2) and origins.min() >= 0 and origins.max() <= 64 - 16
    with torch.no_grad():
        full = forward_crops(model, batch)
        part = forward_crops(model, batch, origins=origins, patch=16)
    for i in range(2):
        for k, (y, x) in enumerate(origins[i]):
            want = full[i, 0, y:y + 16, x:x + 16]
            torch.testing.assert_close(part[i * 2 + k, 0], want, atol=1e-5, rtol=1e-4)


def test_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model("crm_mnv2")
    use_space_to_batch(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch(1, n=2, s=32)
    losses = [train_step(model, opt, batch)["total"] for _ in range(10)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.97 * losses[0]
    assert (np.diff(losses) < 0).sum() >= 7


def test_fresh_init_starts_a_mask_prior_model_at_its_incoming_mask() -> None:
    from pipeline.models.crm import make_coord
    from pipeline.train.loop import init_for_training

    torch.manual_seed(0)
    model = build_model("crm_mnv2").eval()
    assert model.mask_prior == 2.0
    stem = model.feats.features[0][0].weight
    stem.data[:, 3] = 0  # as the ImageNet init leaves the mask channel
    init_for_training(model, seed=0)
    assert stem[:, 3].abs().sum() > 0 and stem[:, :3].abs().sum() > 0
    x = torch.randn(1, 4, 48, 48)
    coord = make_coord((48, 48)).unsqueeze(0)
    cell = torch.full_like(coord, 2 / 48)
    logits = model(x, coord, cell)
    # the untrained decoder adds nothing: the output is the incoming mask, exactly
    torch.testing.assert_close(logits, 2.0 * x[:, 3].reshape(1, -1), atol=1e-4, rtol=0)
    model.train()
    model(x, coord, cell).pow(2).mean().backward()
    last = [m for m in model.imnet.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.weight.grad.abs().sum() > 0  # and it can learn from the first step


def test_overfits_a_fixed_batch() -> None:
    """The model, loss and step can fit: a fixed batch of two crops goes to a near-zero loss."""
    from pipeline.train.loop import init_for_training

    torch.manual_seed(0)
    model = build_model("crm_mnv2")
    init_for_training(model, seed=0)
    use_space_to_batch(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch(1, n=2, s=32)
    first = train_step(model, opt, batch)
    for _ in range(150):
        last = train_step(model, opt, batch)
    assert first["l1"] > 0.05
    assert last["l1"] < 0.02 and last["mse"] < 0.005, (first, last)
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(forward_crops(model, batch)) > 0.5
    assert (pred == (batch["gt"] > 0.5)).float().mean() > 0.995


def test_training_forward_equals_refine_on_the_same_crop() -> None:
    """No training/inference mismatch: the training-time path (forward_crops on a crop) and
    refine() (single scale, no padding) compute the same probabilities from the same inputs:
    normalisation, mask scale and sign, coordinates / cells and the mask prior included."""
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.train.loop import init_for_training

    torch.manual_seed(0)
    model = build_model("crm_mnv2")
    init_for_training(model, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch(2, n=1, s=64)
    for _ in range(5):  # a decoder that is not zero any more
        train_step(model, opt, batch)
    model.eval()
    image = np.rint(batch["image"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    coarse = np.rint(batch["coarse"][0, 0].numpy() * 255).astype(np.uint8)
    b = {"image": torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
         "coarse": torch.from_numpy(coarse)[None, None].float() / 255}
    with torch.no_grad():
        train_prob = torch.sigmoid(forward_crops(model, b))[0, 0].numpy()
    for options in (RefineOptions(scales=(1.0,), pad=0), RefineOptions.official(scales=(1.0,), pad=0)):
        prob = refine(prepare_model(copy.deepcopy(model), options), image, coarse, options=options)
        np.testing.assert_allclose(prob, train_prob, atol=2e-5)


def test_training_step_reads_back_a_fixed_number_of_times() -> None:
    """The patch origins read the boundary map back once per batch, not once per window, and the
    loss parts come back at once: the host-device syncs of a step do not grow with the windows."""
    from tests.syncs import SyncCounter

    def syncs(batch_size: int, patches: int) -> tuple[int, str]:
        torch.manual_seed(0)
        model = build_model("crm_mnv2")
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        gt = torch.zeros(batch_size, 1, 32, 32)
        gt[:, :, 8:24, 6:20] = 1
        batch = {"image": torch.rand(batch_size, 3, 32, 32), "coarse": gt.clone(), "gt": gt}
        with SyncCounter(scope="/pipeline/") as counter:  # Adam's host-side step counters aside
            train_step(model, opt, batch, patch=8, patches=patches, rng=np.random.default_rng(0))
        return counter.count, counter.summary()

    few, where = syncs(1, 1)
    many, where_many = syncs(3, 6)
    assert many == few <= 8, f"{where} / {where_many}"


def test_patch_origins_follow_the_boundary() -> None:
    gt = torch.zeros(2, 1, 40, 40)
    gt[0, :, 10:30, 10:30] = 1  # crop 1 has no boundary: uniform windows
    origins = patch_origins(gt, 8, 50, np.random.default_rng(1), p_boundary=1.0)
    assert origins.shape == (2, 50, 2) and origins.min() >= 0 and origins.max() <= 32
    centres = origins[0] + 4
    near = (np.abs(centres - 10) <= 6) | (np.abs(centres - 30) <= 6)
    assert near.any(axis=1).all()  # every window of crop 0 sits on a row or column of the square's edge
