"""Checkpoint I/O: round trips in official naming, fsspec URLs, clear errors for bad files."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import pytest
import torch

from pipeline.io.weights import checkpoint_hash, read_state_dict, save_checkpoint
from pipeline.models import CheckpointError, build_model, load_weights

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_crm" / "weights_official_format.pt.gz"


@pytest.fixture(scope="module")
def crm_mnv2():
    torch.manual_seed(0)
    return build_model("crm_mnv2")


def test_save_writes_official_prefix_and_round_trips(tmp_path, crm_mnv2):
    path = str(tmp_path / "sub" / "model.pt")
    assert save_checkpoint(crm_mnv2, path) == path
    state = read_state_dict(path)
    assert all(k.startswith("module.") for k in state)
    assert len(state) == len(crm_mnv2.state_dict())
    rebuilt = build_model("crm_mnv2", checkpoint=path)
    for key, value in crm_mnv2.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    assert not rebuilt.training


def test_golden_gzip_checkpoint_loads_through_build_model():
    model = build_model("crm_r50", checkpoint=str(GOLDEN))
    state = torch.load(gzip.open(GOLDEN), map_location="cpu", weights_only=True)
    assert torch.equal(
        model.state_dict()["aspp_.aspp1_1024.bn.running_mean"],
        state["module.aspp_.aspp1_1024.bn.running_mean"],
    )


def test_fsspec_memory_url_round_trip_and_hash(crm_mnv2):
    uri = "memory://samsr-tests/ckpt/crm_mnv2.pt"
    save_checkpoint(crm_mnv2, uri)
    digest = checkpoint_hash(uri)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert checkpoint_hash(uri) == digest
    rebuilt = build_model("crm_mnv2", checkpoint=uri)
    key = "imnet.layers.0.weight"
    assert torch.equal(rebuilt.state_dict()[key], crm_mnv2.state_dict()[key])
    other = build_model("crm_mnv2")
    save_checkpoint(other, "memory://samsr-tests/ckpt/other.pt")
    assert checkpoint_hash("memory://samsr-tests/ckpt/other.pt") != digest


def test_missing_file_names_the_file(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt.*not found"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="nope.pt"):
        build_model("crm_r50", checkpoint=path)
    with pytest.raises(CheckpointError, match="nope.pt"):
        checkpoint_hash(path)


def test_truncated_file_names_the_file(tmp_path, crm_mnv2):
    buffer = io.BytesIO()
    torch.save(crm_mnv2.state_dict(), buffer)
    path = tmp_path / "half.pt"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CheckpointError, match="half.pt.*(truncated|cannot be read)"):
        read_state_dict(str(path))
    gz = tmp_path / "half.pt.gz"
    gz.write_bytes(gzip.compress(buffer.getvalue())[:1000])
    with pytest.raises(CheckpointError, match="half.pt.gz"):
        read_state_dict(str(gz))


def test_missing_key_is_named(tmp_path, crm_mnv2):
    state = crm_mnv2.state_dict()
    state.pop("aspp_.bn1_256.running_var")
    path = tmp_path / "missing_key.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing_key.pt.*missing key 'aspp_.bn1_256.running_var'"):
        build_model("crm_mnv2", checkpoint=str(path))


def test_unexpected_key_is_named(crm_mnv2):
    state = dict(crm_mnv2.state_dict())
    state["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"src.pt.*unexpected key 'extra.weight'"):
        load_weights(build_model("crm_mnv2"), state, source="src.pt")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    # A 7-channel SAM-SR checkpoint does not load into a 4-channel CRM: the stem is named.
    path = tmp_path / "v21.pt"
    save_checkpoint(build_model("samsr_v21_mnv2"), str(path))
    with pytest.raises(
        CheckpointError, match=r"v21.pt.*'feats.features.0.0.weight'.*\(32, 7, 3, 3\).*\(32, 4, 3, 3\)"
    ):
        build_model("crm_mnv2", checkpoint=str(path))


def test_wrong_architecture_names_first_bad_key():
    with pytest.raises(CheckpointError, match=r"golden.*missing key 'feats.features.0.0.weight'"):
        load_weights(build_model("crm_mnv2"), read_state_dict(str(GOLDEN)), source="golden")


def test_non_tensor_entries_are_rejected(tmp_path):
    path = tmp_path / "weird.pt"
    torch.save({"a": torch.zeros(1), "b": 3}, path)
    with pytest.raises(CheckpointError, match=r"weird.pt.*'b'"):
        read_state_dict(str(path))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list.pt.*state dict"):
        read_state_dict(str(tmp_path / "list.pt"))
