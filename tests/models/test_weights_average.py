"""Weight-space interpolation of two weights files (WiSE-FT / model soup): `samsr weights average`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.cli import main
from pipeline.io.weights import read_state_dict, save_checkpoint
from pipeline.models import build_model
from pipeline.models.checkpoint import CheckpointError, interpolate_state_dicts, strip_prefix
from pipeline.refine import RefineOptions, refine


def _pair(tmp_path, name="samsr_v21_mnv2"):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(name)
        for m in model.modules():  # distinct BatchNorm statistics too
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(10 + seed)
        paths.append(str(tmp_path / f"w{seed}.pt"))
        save_checkpoint(model, paths[-1])
    return paths


def test_interpolation_is_tensor_by_tensor_and_exact_at_the_ends(tmp_path):
    a_path, b_path = _pair(tmp_path)
    a, b = strip_prefix(read_state_dict(a_path)), strip_prefix(read_state_dict(b_path))
    for alpha in (0.0, 0.25, 1.0):
        mixed = interpolate_state_dicts(read_state_dict(a_path), read_state_dict(b_path), alpha)
        assert set(mixed) == set(a)
        for key, value in mixed.items():
            assert value.dtype == a[key].dtype and value.shape == a[key].shape
            if value.is_floating_point():
                want = (1 - alpha) * a[key].double() + alpha * b[key].double()
                assert torch.allclose(value.double(), want, atol=1e-6), key
                if alpha in (0.0, 1.0):
                    assert torch.equal(value, (a if alpha == 0.0 else b)[key])
            else:
                assert torch.equal(value, b[key])  # BatchNorm step counters: from the tuned side
    assert any(not v.is_floating_point() for v in a.values())


def test_mismatched_checkpoints_are_refused_naming_the_key(tmp_path):
    a = strip_prefix(read_state_dict(_pair(tmp_path)[0]))
    extra = {**a, "head.extra": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="key 'head.extra' is not in the other"):
        interpolate_state_dicts(a, extra, 0.5, ("base.pt", "tuned.pt"))
    key = next(k for k, v in a.items() if v.dim() == 4)
    bent = {**a, key: torch.zeros(1, 1, 1, 1)}
    with pytest.raises(CheckpointError, match=f"tuned.pt: key '{key}' has shape"):
        interpolate_state_dicts(a, bent, 0.5, ("base.pt", "tuned.pt"))
    with pytest.raises(ValueError, match="alpha must be in"):
        interpolate_state_dicts(a, a, 1.5)


def test_weights_average_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    a_path, b_path = _pair(tmp_path)
    out = tmp_path / "sub" / "mix.pt"
    code = main(["weights", "average", a_path, b_path, "--alpha", "0.5", "--out", str(out),
                 "--model", "samsr_v21_mnv2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "sha256" in printed
    stored = read_state_dict(str(out))
    assert all(k.startswith("module.") for k in stored)  # official key style
    model = build_model("samsr_v21_mnv2", checkpoint=str(out)).eval()  # loads strictly
    a = strip_prefix(read_state_dict(a_path))
    b = strip_prefix(read_state_dict(b_path))
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.5 * (a[key] + b[key]), atol=1e-6), key
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    coarse = np.zeros((64, 80), np.uint8)
    coarse[16:48, 20:60] = 255
    prob = refine(model, image, coarse, rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
                  options=RefineOptions(scales=(1.0,)))
    assert prob.shape == (64, 80) and np.isfinite(prob).all()


def test_weights_average_command_errors_exit_2(tmp_path, capsys):
    a_path, _ = _pair(tmp_path)
    torch.manual_seed(0)
    other = str(tmp_path / "crm.pt")
    save_checkpoint(build_model("crm_mnv2"), other)  # a 4-channel stem: not the same model
    code = main(["weights", "average", a_path, other, "--out", str(tmp_path / "x.pt")])
    assert code == 2
    err = capsys.readouterr().err
    assert "samsr weights: error: checkpoint" in err and "shape" in err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SystemExit) as e:
        main(["weights", "average", a_path, a_path, "--alpha", "2", "--out", str(tmp_path / "y.pt")])
    assert e.value.code == 2 and "--alpha" in capsys.readouterr().err
    code = main(["weights", "average", a_path, str(tmp_path / "missing.pt"), "--out", str(tmp_path / "z.pt")])
    assert code == 2 and "file not found" in capsys.readouterr().err
