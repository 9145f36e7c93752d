"""Flags declared as data (pipeline.config.flags): parsing, switches, lists and the errors."""

from __future__ import annotations

import argparse

import pytest

from pipeline.config.flags import Flag, add_flags, flag_overrides

GROUPS = {
    "g": [
        Flag("--steps", "optim.steps", kind="int", help="[optim.steps]"),
        Flag("--data", "data.uris", append=True, metavar="URI"),
        Flag("--milestones", "optim.lr_milestones", kind="int_list"),
        Flag("--kinds", "optim.kinds", kind="str_list"),
        Flag("--dropout", "optim.dropout", kind="float", negative_is_none=True),
        Flag("--no-ray", "run.ray", switch=False),
        Flag("--layout", "data.layout", choices=("prefix", "list")),
    ]
}


def _parse(argv):
    ap = argparse.ArgumentParser()
    add_flags(ap, GROUPS)
    return flag_overrides(ap.parse_args(argv), GROUPS)


def test_only_given_flags_become_overrides_in_table_order():
    assert _parse([]) == []
    got = _parse(["--no-ray", "--steps", "7", "--data", "a", "--data", "b", "--milestones", "5, 9",
                  "--kinds", "identity,,perturbed", "--dropout", "-1", "--layout", "list"])
    assert got == [(["optim", "steps"], 7), (["data", "uris"], ["a", "b"]),
                   (["optim", "lr_milestones"], [5, 9]), (["optim", "kinds"], ["identity", "perturbed"]),
                   (["optim", "dropout"], None), (["run", "ray"], False), (["data", "layout"], "list")]
    assert _parse(["--dropout", "0.25"]) == [(["optim", "dropout"], 0.25)]


def test_bad_values_name_the_flag():
    with pytest.raises(ValueError, match="--milestones 'a,b': expected comma-separated integers"):
        _parse(["--milestones", "a,b"])
    with pytest.raises(SystemExit):  # argparse: not an int / not a choice
        _parse(["--steps", "x"])
    with pytest.raises(SystemExit):
        _parse(["--layout", "webdataset"])


def test_every_train_flag_names_a_real_config_key():
    from pipeline.train.config import load_train_config, train_config_to_dict
    from pipeline.train.flags import TRAIN_FLAGS

    keys = train_config_to_dict(load_train_config(None, [(["run", "checkpoint_dir"], "/tmp/x")]))
    for flags in TRAIN_FLAGS.values():
        for f in flags:
            section, name = f.key.split(".")
            assert name in keys[section], f.name
            assert f"[{f.key}" in f.help, f.name  # the help shows the key it sets
