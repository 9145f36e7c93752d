"""SAM-SR-v2.1 training: CRM init with zeroed SAM channels, cached SAM colour maps (tiny SAM), end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.io.weights import read_state_dict, save_checkpoint
from pipeline.models import build_model, make_coord
from pipeline.train.data import CropDataset, LayoutSource
from pipeline.train.loop import init_from_checkpoint
from pipeline.train.sam_cache import SamColourCache, SamSettings, precompute_colour_maps
from pipeline.train.step import train_step
from tests.helpers import write_composites

pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_v21")
    write_composites(root, 2, 96, 128, seed=1, colour=(200, 60, 90), prefix="v")
    return root


def test_v21_from_crm_checkpoint_computes_crm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    crm = build_model("crm_mnv2")
    path = str(tmp_path / "crm.pt")
    save_checkpoint(crm, path)
    v21 = build_model("samsr_v21_mnv2")
    init_from_checkpoint(v21, read_state_dict(path), path)
    stem = v21.state_dict()["feats.features.0.0.weight"]
    assert stem.shape[1] == 7 and torch.all(stem[:, 4:] == 0)
    x = torch.randn(1, 4, 40, 48)
    sam = torch.rand(1, 3, 40, 48) * 2 - 1
    coord = make_coord((40, 48)).unsqueeze(0)
    cell = torch.full_like(coord, 2 / 40)
    with torch.no_grad():
        torch.testing.assert_close(v21(torch.cat([x, sam], 1), coord, cell), crm(x, coord, cell))
    with pytest.raises(ValueError, match="bad.pt: missing key"):
        init_from_checkpoint(v21, {"nope": torch.zeros(1)}, "bad.pt")


def test_colour_cache_precompute_and_read(tiny_data: Path, tmp_path: Path) -> None:
    source = LayoutSource(str(tiny_data))
    settings = SamSettings(model_type="tiny", points_per_side=4, working_size=128)
    cache = SamColourCache(str(tmp_path / "cache"), settings)
    assert precompute_colour_maps(source, cache) == {"computed": 2, "cached": 0}
    assert precompute_colour_maps(source, cache) == {"computed": 0, "cached": 2}
    files = sorted((tmp_path / "cache" / settings.digest()).glob("*.png"))
    assert len(files) == 2
    other = SamSettings(model_type="tiny", points_per_side=8, working_size=128)
    assert other.digest() != settings.digest()
    with pytest.raises(ValueError, match="no cached SAM colour map"):
        SamColourCache(str(tmp_path / "cache"), other)("v0", source.get(0)[1])
    key, image, gt = source.get(0)
    colours = cache(key, image)
    assert colours.dtype == np.uint8 and colours.ndim == 3 and colours.shape[2] == 3
    assert max(colours.shape[:2]) == 128
    ds = CropDataset(source, crop=64, sam_lookup=cache)
    item = ds[0]
    assert item["sam"].shape == (3, 64, 64) and 0 <= item["sam"].min() and item["sam"].max() <= 1
    model = build_model("samsr_v21_mnv2")
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in item}
    parts = train_step(model, torch.optim.Adam(model.parameters(), 1e-3), batch, patch=16, patches=1,
                       rng=np.random.default_rng(0))
    assert np.isfinite(parts["total"])
    with pytest.raises(ValueError, match="no 'sam'"):
        no_sam = {k: batch[k] for k in ("image", "coarse", "gt")}
        train_step(model, torch.optim.Adam(model.parameters()), no_sam)


def test_v21_job_end_to_end_with_ray(ray_local, tiny_data: Path, tmp_path: Path) -> None:
    from jobs.train import main
    from pipeline.train.checkpoint import load_latest

    crm = build_model("crm_mnv2")
    crm_path = str(tmp_path / "crm.pt")
    save_checkpoint(crm, crm_path)
    ckpt = tmp_path / "v21"
    assert main(["--data", str(tiny_data), "--model", "samsr_v21_mnv2", "--init-checkpoint", crm_path,
                 "--proposals", "sam", "--sam-model-type", "tiny", "--sam-points-per-side", "4",
                 "--sam-working-size", "128",
                 "--steps", "1", "--batch-size", "2", "--crop", "64", "--patch", "16", "--patches", "1",
                 "--checkpoint-dir", str(ckpt)]) == 0
    state = load_latest(str(ckpt))
    assert state["step"] == 1 and state["model"]["feats.features.0.0.weight"].shape[1] == 7
    assert len(list((ckpt / "sam_cache").glob("*/*.png"))) == 2


def test_colour_map_precompute_runs_on_the_training_device() -> None:
    from pipeline.train.sam_cache import task_resources

    sam_settings = SamSettings(model_type="tiny", points_per_side=4, working_size=128)
    regions = SamSettings(proposals="regions")
    assert task_resources(sam_settings, 2.0, use_gpu=True) == {"num_cpus": 2.0, "num_gpus": 1}
    assert task_resources(sam_settings, 2.0, use_gpu=False) == {"num_cpus": 2.0, "num_gpus": 0}
    assert task_resources(regions, 1.0, use_gpu=True) == {"num_cpus": 1.0, "num_gpus": 0}  # no model
    generator = sam_settings.generator("meta")  # the device it is given (cuda with use_gpu)
    assert {p.device.type for p in generator.sam.parameters()} == {"meta"}
    assert {p.device.type for p in sam_settings.generator().sam.parameters()} == {"cpu"}
