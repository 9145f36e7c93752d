"""samsr train's typed config: configs/train.yaml documents every key with its default; flags,
--set and the file combine like samsr refine's; errors name the key before any work."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from jobs.train import build_parser, config_from_args, main
from pipeline.train.config import TrainJobConfig, load_train_config, loop_config, train_config_from_dict

ROOT = Path(__file__).resolve().parents[2]


def _cfg(argv):
    return config_from_args(build_parser().parse_args(argv))


def test_train_yaml_spells_out_every_key_with_the_defaults():
    data = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    for name, cls in typing.get_type_hints(TrainJobConfig).items():
        assert set(data[name]) == {g.name for g in dataclasses.fields(cls)}, name
    assert set(data) == set(typing.get_type_hints(TrainJobConfig))
    from_file = load_train_config(str(ROOT / "configs" / "train.yaml"), [(["run", "checkpoint_dir"], "c")])
    assert from_file == train_config_from_dict({"run": {"checkpoint_dir": "c"}})


def test_flags_set_and_file_combine(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("optim: {steps: 50, lr: 0.001}\nrun: {checkpoint_dir: from-file}\ndata: {uris: [x]}\n")
    cfg = _cfg(["--config", str(path), "--data", "a", "--data", "b", "--steps", "5", "--lr-milestones", "2,4",
                "--dropout", "-1", "--no-ray", "--pretrained-backbone", "--set", "optim.lr=0.002",
                "--set", "sam.proposals=regions", "--time-budget", "1.5",
                "--truth-jitter-kinds", "identity, annotation",
                "--p-truth-offset", "0.5", "--truth-offset", "2"])
    assert cfg.data.uris == ["a", "b"] and cfg.optim.steps == 5 and cfg.optim.lr_milestones == [2, 4]
    assert cfg.optim.lr == 0.002 and cfg.optim.dropout is None and cfg.run.ray is False
    assert cfg.run.checkpoint_dir == "from-file" and cfg.model.pretrained_backbone is True
    assert cfg.sam.proposals == "regions"
    loop = loop_config(cfg)
    assert loop.lr_milestones == (2, 4) and loop.time_budget_s == 90.0 and loop.dropout is None
    assert loop.loss_weights.grad == 5.0 and loop.input_scale_range == (0.125, 1.0)
    assert loop.truth_jitter_kinds == ("identity", "annotation")
    assert loop.p_truth_offset == 0.5 and loop.truth_offset == 2
    plain = _cfg(["--checkpoint-dir", "c"])  # no file: the dataclass defaults (= configs/train.yaml)
    assert plain.data.uris == [] and plain.run.ray is True and plain.model.fresh_init is True


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--data", "d"], "run.checkpoint_dir: required"),
        (["--checkpoint-dir", "c", "--set", "optim.bogus=1"], "optim.bogus: unknown key"),
        (["--checkpoint-dir", "c", "--set", "optim.steps=0"], "optim.steps"),
        (["--checkpoint-dir", "c", "--set", "optim.lr_milestones=[1, x]"], "optim.lr_milestones[1]"),
        (["--checkpoint-dir", "c", "--loss-weights", "1,2"], "optim.loss_weights"),
        (["--checkpoint-dir", "c", "--lr-milestones", "3,a"], "--lr-milestones"),
        (["--checkpoint-dir", "c", "--set", "optim.p_identity=1.5"], "optim.p_identity"),
        (["--checkpoint-dir", "c", "--truth-jitter-kinds", "identity,lowres"], "optim.truth_jitter_kinds"),
        (["--checkpoint-dir", "c", "--set", "training.x=1"], "training: unknown key"),
        (["--checkpoint-dir", "c", "--p-truth-offset", "2"], "optim.p_truth_offset"),
        (["--checkpoint-dir", "c", "--truth-offset", "0"], "optim.truth_offset"),
        (["--checkpoint-dir", "c", "--data", "d", "--model", "nope"], "model.name"),
        (["--checkpoint-dir", "c"], "data.uris: no training data"),
    ],
)
def test_config_errors_name_the_key_before_any_work(argv, words, capsys, tmp_path):
    assert main([*argv]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and words in err, err


def test_print_config(capsys):
    assert main(["--checkpoint-dir", "c", "--data", "d", "--print-config"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["checkpoint_dir"] == "c" and out["data"]["uris"] == ["d"]
    assert out["optim"]["steps"] == 1000


def test_training_seed_keeps_the_colour_map_cache():
    """The colour-map cache key comes from the sam section only: --seed (optim.seed) reorders the
    training data but reuses the maps; --sam-seed (sam.seed) makes new ones."""
    from pipeline.train.job import sam_settings

    base = sam_settings(_cfg(["--checkpoint-dir", "c", "--seed", "0"]))
    other_seed = sam_settings(_cfg(["--checkpoint-dir", "c", "--seed", "7"]))
    colours = sam_settings(_cfg(["--checkpoint-dir", "c", "--seed", "7", "--sam-seed", "2"]))
    assert base == other_seed and base.seed == 0 and colours.seed == 2
    assert base.digest() == other_seed.digest() != colours.digest()
