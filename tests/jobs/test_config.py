"""Job configs: YAML -> typed frozen dataclasses; every bad key or value names its key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.config import (
    RefineJobConfig,
    config_from_dict,
    default_job_id,
    load_config,
    with_absolute_paths,
)
from pipeline.config.preflight import check_runtime
from pipeline.config.typed import apply_overrides, parse_override

ROOT = Path(__file__).resolve().parents[2]
BASE = {"input": {"uri": "in"}, "output": {"prefix": "out"}}


def _with(path: str, value) -> dict:
    return apply_overrides(BASE, [(path.split("."), value)])


def test_shipped_configs_validate():
    demo = load_config(str(ROOT / "configs" / "demo.yaml"))
    assert isinstance(demo, RefineJobConfig)
    assert (demo.method, demo.model.name, demo.model.checkpoint, demo.sam.proposals) == (
        "samsr-v2.1",
        "samsr_v21_mnv2",
        "pipeline/weights/samsr_v21_mnv2.pt",
        "regions",
    )
    shipped = dataclasses.replace(demo.model, checkpoint=str(ROOT / demo.model.checkpoint))
    check_runtime(dataclasses.replace(demo, model=shipped))  # the shipped weights exist, fit the method
    assert (demo.input.uri, demo.input.layout, demo.output.prefix) == ("samples/demo", "prefix", "out/demo")
    # the settings that measured best (model card): one scale, align 8, the 180-degree TTA, the edge
    # check, the area-keeping line level; and do no harm with the shipped trust model
    assert demo.refine.options == {"scales": [1.0], "align": 8, "tta": "rot180", "edge_check": 0.25,
                                   "threshold": "area"}
    assert (demo.refine.trust_model, demo.refine.accept, demo.refine.min_score) == (
        "shipped", "regions", None)
    relabel = load_config(str(ROOT / "configs" / "relabel.yaml"), [(["input", "uri"], "x"),
                                                                   (["output", "prefix"], "y")])
    assert relabel.refine == demo.refine  # relabel refines as the demo does
    assert demo.ray.address is None  # local Ray in-process
    default = load_config(str(ROOT / "configs" / "default.yaml"))
    # every key of every section is spelled out in default.yaml, with the dataclass defaults
    # (sam.proposals: null resolves to regions without a SAM checkpoint)
    assert default.sam == dataclasses.replace(type(default.sam)(), proposals="regions")
    assert default.regions == type(default.regions)() and default.refine == type(default.refine)()
    assert default.ray == type(default.ray)() and default.v1 == type(default.v1)()
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.method = "samsr-v1"


def test_method_defaults_to_samsr_v21_only_with_a_sam_checkpoint():
    assert config_from_dict(BASE).method == "crm"
    assert config_from_dict(_with("sam.checkpoint", "sam.pth")).method == "samsr-v2.1"
    cfg = config_from_dict({**_with("sam.checkpoint", "sam.pth"), "method": "samsr-v1"})
    assert cfg.method == "samsr-v1" and cfg.uses_sam and cfg.sam.proposals == "sam"
    # no SAM checkpoint: the samsr methods use the regions proposals (no weights) unless told
    regions = config_from_dict({**BASE, "method": "samsr-v2.1"})
    assert regions.sam.proposals == "regions"
    explicit = config_from_dict({**_with("sam.proposals", "regions"), "sam": {"checkpoint": "sam.pth",
                                                                            "proposals": "regions"}})
    assert explicit.sam.proposals == "regions" and explicit.method == "samsr-v2.1"


@pytest.mark.parametrize(
    "data, message",
    [
        ({**BASE, "bogus": 1}, "bogus: unknown key"),
        (_with("refine.decod", "full"), "refine.decod: unknown key"),
        (
            _with("refine.decode", "fast"),
            "refine.decode: must be one of 'full', 'strided', 'bbox', 'contour'",
        ),
        (_with("refine.stride", 0), "refine.stride: must be > 0"),
        (_with("refine.stride", "4"), "refine.stride: must be an integer"),
        (_with("refine.stride", True), "refine.stride: must be an integer"),
        (_with("ray.batch_size", 1.5), "ray.batch_size: must be an integer"),
        (_with("sam.pred_iou_thresh", 1.5), "sam.pred_iou_thresh: must be in [0, 1]"),
        (_with("sam.model_type", "vit_x"), "sam.model_type: must be one of"),
        (_with("sam.proposals", "slic"), "sam.proposals: must be one of 'sam', 'regions'"),
        (_with("sam.precision", "int8"), "sam.precision: must be one of 'auto', 'fp32', 'bf16', 'fp16'"),
        (_with("sam.reassociate", "yes"), "sam.reassociate: must be true or false"),
        (_with("regions.min_segment", 0), "regions.min_segment: must be in (0, 1)"),
        (_with("regions.merge_factor", 1), "regions.merge_factor: must be > 1"),
        (_with("regions.algorithm", "watershed"), "regions.algorithm: must be one of 'felzenszwalb'"),
        (_with("regions.segment_size", 8), "regions.segment_size: must be >= 16"),
        (_with("output.soft", "yes"), "output.soft: must be true or false"),
        (_with("input.layout", "zip"), "input.layout: must be one of"),
        (_with("refine.options", [1]), "refine.options: must be a mapping"),
        (_with("refine.options", {"tiles": 3}), "refine.options.tiles: unknown key"),
        (_with("refine.options", {"tile": 2}), "refine.options.tile: RefineOptions.tile=2"),
        (_with("refine.options", {"tile_encoder": "big"}), "refine.options.tile_encoder: RefineOptions"),
        (_with("refine.options", {"tile_encoder": 32}), "refine.options.tile_encoder: RefineOptions.tile_en"),
        (_with("refine.options", {"tile_encoder": True}), "refine.options.tile_encoder: "),
        ({**BASE, "method": "crf"}, "method: must be one of 'crm', 'samsr-v1', 'samsr-v2.1'"),
        ({**BASE, "job_id": "a/b"}, "job_id: must be"),
        ({**BASE, "refine": 3}, "refine: must be a mapping"),
        ({"output": {"prefix": "o"}}, "input.uri: required"),
        ({"input": {"uri": "i"}}, "output.prefix: required"),
        (_with("input.uri", ""), "input.uri: must not be empty"),
    ],
)
def test_bad_keys_and_values_name_the_key(data, message):
    with pytest.raises(ValueError) as err:
        config_from_dict(data)
    assert str(err.value).startswith(message), str(err.value)


def test_numbers_widen_and_options_pass_through():
    cfg = config_from_dict(
        apply_overrides(BASE, [(["sam", "box_nms_thresh"], 1), (["refine", "options"], {"tile": 128})])
    )
    assert cfg.sam.box_nms_thresh == 1.0 and isinstance(cfg.sam.box_nms_thresh, float)
    assert cfg.refine.options == {"tile": 128}


def test_tile_encoder_values_pass_and_yaml_off_reads_as_off():
    from pipeline.refine import RefineOptions

    for value in ("auto", "off", 1024, 64):
        assert config_from_dict(_with("refine.options", {"tile_encoder": value})).refine.options == {
            "tile_encoder": value}
    _, value = parse_override("refine.options.tile_encoder=off")  # YAML 1.1: a bare off is false
    assert value is False
    config_from_dict(_with("refine.options.tile_encoder", value))
    assert RefineOptions(tile_encoder=value).tile_encoder == "off"


def test_overrides_parse_yaml_values_and_do_not_mutate():
    assert parse_override("refine.stride=8") == (["refine", "stride"], 8)
    assert parse_override("ray.address=null") == (["ray", "address"], None)
    assert parse_override("output.soft=true") == (["output", "soft"], True)
    assert parse_override("input.uri=s3://b/x=1") == (["input", "uri"], "s3://b/x=1")
    for bad in ("refine.stride", "=3", "a..b=1"):
        with pytest.raises(ValueError, match="--set"):
            parse_override(bad)
    raw = {"input": {"uri": "a"}}
    new = apply_overrides(raw, [(["input", "uri"], "b"), (["ray", "batch_size"], 2)])
    assert raw == {"input": {"uri": "a"}} and new == {"input": {"uri": "b"}, "ray": {"batch_size": 2}}
    with pytest.raises(ValueError, match="input.uri: is not a section"):
        apply_overrides(raw, [(["input", "uri", "x"], 1)])


def test_load_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(str(listy))


def test_job_id_is_stable_per_output_prefix():
    assert (
        default_job_id("out/demo")
        == default_job_id("./out/demo/")
        == config_from_dict({"input": {"uri": "x"}, "output": {"prefix": "out/demo"}}).job_id
    )
    assert default_job_id("out/demo").startswith("demo-") and default_job_id("out/demo") != default_job_id(
        "out/x"
    )
    assert default_job_id("s3://bucket/runs/big test").startswith("big_test-")


def test_absolute_paths_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(
        config_from_dict({**BASE, "model": {"checkpoint": "w.pt"}, "output": {"prefix": "s3://b/o"}})
    )
    assert cfg.input.uri == str(tmp_path / "in") and cfg.model.checkpoint == str(tmp_path / "w.pt")
    assert cfg.output.prefix == "s3://b/o"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from pipeline.io.weights import save_checkpoint
    from pipeline.models import build_model

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(build_model("crm_mnv2"), str(d / "crm.pt"))
    (d / "sam.pth").write_bytes(b"not checked here")
    return d


def test_check_runtime_names_the_key_before_any_work(checkpoints, tmp_path):
    ok = {
        "input": {"uri": str(tmp_path)},
        "output": {"prefix": str(tmp_path / "o")},
        "model": {"name": "crm_mnv2", "checkpoint": str(checkpoints / "crm.pt")},
    }
    check_runtime(config_from_dict(ok))
    cases = [
        (("model", "checkpoint"), str(checkpoints / "nope.pt"), "model.checkpoint: file not found"),
        (("model", "checkpoint"), None, "model.checkpoint: required"),
        (("model", "name"), "crm_r18", "model.name: must be one of"),
        (("method",), "samsr-v2.1", "model.name: method samsr-v2.1 needs a SAM-SR-v2.1"),
        (("output", "prefix"), "nosuchproto://x/y", "output.prefix: cannot open nosuchproto://"),
    ]
    for path, value, message in cases:
        data = apply_overrides(ok, [(list(path), value)])
        with pytest.raises(ValueError) as err:
            check_runtime(config_from_dict(data))
        assert str(err.value).startswith(message), str(err.value)
    v1 = apply_overrides(
        ok, [(["method"], "samsr-v1"), (["sam", "checkpoint"], str(checkpoints / "missing.pth"))]
    )
    with pytest.raises(ValueError, match="sam.checkpoint: file not found"):
        check_runtime(config_from_dict(v1))
    no_sam = apply_overrides(ok, [(["method"], "samsr-v1"), (["sam", "proposals"], "sam")])
    with pytest.raises(ValueError, match="sam.checkpoint: required for method samsr-v1 with sam.proposals"):
        check_runtime(config_from_dict(no_sam))
    check_runtime(config_from_dict(apply_overrides(ok, [(["method"], "samsr-v1")])))  # regions: no weights
    # accept: regions reads the shipped region model, or names refine.region_model
    check_runtime(config_from_dict(apply_overrides(ok, [(["refine", "accept"], "regions")])))
    bad = apply_overrides(ok, [(["refine", "accept"], "regions"),
                               (["refine", "region_model"], str(tmp_path / "nope.json"))])
    with pytest.raises(ValueError, match="refine.region_model: region trust model .*nope.json: not found"):
        check_runtime(config_from_dict(bad))
    no_trust = apply_overrides(ok, [(["refine", "accept"], "regions"), (["refine", "trust_model"], None)])
    with pytest.raises(ValueError, match="refine.accept: 'regions' needs refine.trust_model"):
        check_runtime(config_from_dict(no_trust))
    with pytest.raises(ValueError, match="refine.accept"):
        config_from_dict(apply_overrides(ok, [(["refine", "accept"], "blobs")]))
    assert not (tmp_path / "o").exists()  # nothing was written
