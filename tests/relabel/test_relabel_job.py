"""samsr relabel end to end on a real local Ray: COCO instances through a real S3 endpoint
(annotations drawn at 1/8 size, bad annotations, a missing image, resume) and label maps;
every refined instance equals the refiner called by hand on the same window."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.config import config_from_dict
from pipeline.io import read_bytes, read_manifest
from pipeline.runner.relabel import run_relabel
from tests.helpers import put
from tests.relabel.scenes import write_coco_dataset, write_labelmap_dataset

USES_S3 = True
H, W = 192, 256
REGIONS = {"segment_size": 64, "scale": 50.0, "min_area": 0.01}


def _cfg(images: str, out: str, checkpoint: str, **relabel) -> object:
    return config_from_dict({
        "input": {"uri": images},
        "output": {"prefix": out},
        "method": "samsr-v2.1",
        "model": {"name": "samsr_v21_mnv2", "checkpoint": checkpoint},
        "sam": {"proposals": "regions", "working_size": 128, "seed": 3},
        "regions": REGIONS,
        "refine": {"options": {"scales": [1.0], "align": 8}},
        "relabel": relabel,
        "ray": {"progress": False},
    })


def _hand_refiner(checkpoint: str):
    """The refiner and the regions proposals called directly, single-threaded like the actors."""
    from pipeline.models import build_model
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.sam import propose
    from pipeline.sam.regions import RegionGenerator, RegionSettings

    options = RefineOptions(scales=(1.0,), align=8)
    model = prepare_model(build_model("samsr_v21_mnv2", checkpoint), options)
    gen = RegionGenerator(RegionSettings(**REGIONS))

    def colours(image, key):
        return propose(gen, image, key, working_size=128, seed=3).colour_map

    def run(image, coarse, cols):
        with torch.inference_mode():
            return refine(model, image, coarse, cols, options=options)

    return colours, run


@pytest.fixture(scope="module")
def coco_data(s3_server, tmp_path_factory):
    import boto3

    bucket = "samsr-relabel-" + tmp_path_factory.mktemp("b").name[-6:].lower().replace("_", "")
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    data = write_coco_dataset(f"s3://{bucket}/data", 2, height=H, width=W, factor=8)
    doc = copy.deepcopy(data["doc"])
    first = doc["images"][0]["id"]
    doc["images"].append({"id": 99, "file_name": "missing.jpg", "width": W // 8, "height": H // 8})
    doc["annotations"] += [
        {"id": 501, "image_id": first, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 9, 1]]},
        {"id": 502, "image_id": first, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": [H * W]}},  # RLE for the full size, not 1/8
        {"id": 503, "image_id": first, "category_id": 77, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 504, "image_id": 12345, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 505, "image_id": 99, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]},
    ]
    put(data["coco"], json.dumps(doc).encode())
    data["doc"] = doc
    return data


def test_coco_relabel_on_s3(coco_data, v21_checkpoint, local_ray, tmp_path, capsys):
    out = coco_data["images"].rsplit("/", 2)[0] + "/out"
    cfg = _cfg(coco_data["images"], out, v21_checkpoint, coco=coco_data["coco"], gt_coco=coco_data["gt"])
    from pipeline.config.preflight import check_relabel

    check_relabel(cfg)
    result = run_relabel(cfg)
    assert (result.images, result.ok, result.error) == (3, 2, 1)
    assert result.output_uri == out + "/coarse.json" and result.merged_images == 2

    rows = read_manifest(out).to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    by_key = {r["key"]: r for r in rows}
    images = {r["key"]: r for r in rows if r["row_kind"] == "image"}
    missing = images["missing.jpg"]
    assert missing["status"] == "error" and missing["error_type"] == "missing_image"
    name0 = coco_data["doc"]["images"][0]["file_name"]
    assert images[name0]["status"] == "ok" and images[name0]["instance_count"] == 4 + 3
    assert images[name0]["output_uri"].endswith(".json") and images[name0]["image_id"] == 10
    bad = {aid: by_key[f"{name0}#ann{aid}"] for aid in (501, 502, 503)}
    assert bad[501]["error_type"] == "bad_polygon" and "annotation 501" in bad[501]["error_message"]
    assert bad[502]["error_type"] == "bad_rle" and "size" in bad[502]["error_message"]
    assert bad[503]["error_type"] == "category_missing" and "77" in bad[503]["error_message"]
    orphan = by_key["image_id=12345#ann504"]
    assert orphan["status"] == "error" and orphan["error_type"] == "unknown_image"
    assert "12345" in orphan["error_message"] and orphan["annotation_id"] == 504
    inst = [r for r in rows if r["row_kind"] == "instance" and r["status"] == "ok"]
    assert len(inst) == 6 and all(r["image_key"] in images for r in inst)
    assert all(r["iou_refined"] is not None and r["mba_coarse"] is not None for r in inst)
    assert all(r["method"] == "samsr-v2.1" and r["sam_model"] == "regions:felzenszwalb" for r in inst)
    assert all(0 < r["trust_score"] < 1 and r["accepted"] is True for r in inst)  # scored; accept: none

    # the output: pycocotools loads it; ids, categories, counts and every other field as in the input
    raw = read_bytes(result.output_uri)
    outdoc = json.loads(raw)
    path = tmp_path / "out.json"
    path.write_bytes(raw)
    coco = COCO(str(path))
    src = coco_data["doc"]
    assert sorted(coco.getAnnIds()) == sorted(a["id"] for a in src["annotations"])
    assert outdoc["categories"] == src["categories"] and outdoc["info"] == src["info"]
    assert outdoc["licenses"] == src["licenses"]
    assert [a["id"] for a in outdoc["annotations"]] == [a["id"] for a in src["annotations"]]
    for rec_in, rec_out in zip(src["images"], outdoc["images"]):
        if rec_in["id"] == 99:
            assert rec_out == rec_in  # failed image: kept as it was
        else:
            assert rec_out == {**rec_in, "width": W, "height": H}
    kept = {a["id"]: a for a in src["annotations"]}
    for a in outdoc["annotations"]:
        if a["id"] in (501, 502, 503, 504, 505):
            assert a == kept[a["id"]]
        elif a["iscrowd"]:
            assert a["segmentation"]["size"] == [H, W]
            assert {k: v for k, v in a.items() if k not in ("segmentation", "area", "bbox")} == \
                {k: v for k, v in kept[a["id"]].items() if k not in ("segmentation", "area", "bbox")}

    # every refined instance equals the refiner called by hand on its window
    from pipeline.io import decode_image
    from pipeline.io.writer import to_binary_u8
    from pipeline.relabel.coco_masks import coarse_window, instance_box
    from pipeline.relabel.crops import crop_box
    from pipeline.relabel.instances import colour_window

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        colours, refine = _hand_refiner(v21_checkpoint)
        out_by_id = {a["id"]: a for a in outdoc["annotations"]}
        checked = 0
        for rec in src["images"][:2]:
            image = decode_image(read_bytes(f"{coco_data['images']}/{rec['file_name']}"))
            cmap = colours(image, rec["file_name"])
            for a in src["annotations"]:
                if a["image_id"] != rec["id"] or a["iscrowd"] or a["id"] > 500:
                    continue
                box = instance_box(a, (H // 8, W // 8), (H, W))
                x0, y0, x1, y1 = win = crop_box(box, H, W)
                prob = refine(np.ascontiguousarray(image[y0:y1, x0:x1]),
                              coarse_window(a, (H // 8, W // 8), (H, W), win), colour_window(cmap, H, W, win))
                want = np.zeros((H, W), bool)
                want[y0:y1, x0:x1] = to_binary_u8(prob) > 0
                seg = out_by_id[a["id"]]["segmentation"]
                got = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
                assert (got != want).sum() <= 0.001 * H * W, a["id"]
                assert out_by_id[a["id"]]["area"] == int(got.sum())
                checked += 1
        assert checked == 6
    finally:
        torch.set_num_threads(threads)

    # samsr evaluate: COCO mask AP and instance metrics, before and after
    from jobs.evaluate import main as evaluate

    capsys.readouterr()
    assert evaluate([out, "--coco-gt", coco_data["gt"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["relabel"]
    assert report["instances"] == 6
    assert report["ap"]["before"]["AP"] is not None and report["ap"]["after"]["AP"] is not None
    inter = sum(r["intersection_refined"] for r in inst)
    union = sum(r["union_refined"] for r in inst)
    assert report["after"]["dataset_iou"] == pytest.approx(inter / union)
    inter_c = sum(r["intersection_coarse"] for r in inst)
    union_c = sum(r["union_coarse"] for r in inst)
    assert report["before"]["dataset_iou"] == pytest.approx(inter_c / union_c)
    assert evaluate([out]) == 0  # the text form counts instances, not images
    assert "(over 6 instances with gt)" in capsys.readouterr().out

    # resume: the two finished images are skipped, the failed one is tried again, same output
    again = run_relabel(cfg)
    assert (again.already_done, again.processed, again.ok, again.error) == (2, 1, 0, 1)
    assert json.loads(read_bytes(again.output_uri)) == outdoc
    rows2 = read_manifest(out).to_pylist()
    assert sorted(r["attempt"] for r in rows2 if r["key"] == "missing.jpg") == [1, 2]


def test_labelmaps_relabel(v21_checkpoint, local_ray, tmp_path, capsys):
    from PIL import Image

    from tests.relabel.scenes import PALETTE

    data = write_labelmap_dataset(str(tmp_path / "data"), 2, height=H, width=W, factor=8)
    out = str(tmp_path / "out")
    result = run_relabel(_cfg(data["uri"], out, v21_checkpoint))
    assert (result.images, result.ok, result.error) == (2, 2, 0)
    rows = read_manifest(out).to_pylist()
    images = [r for r in rows if r["row_kind"] == "image"]
    classes = [r for r in rows if r["row_kind"] == "class"]
    assert len(images) == 2 and len(classes) == 8  # background + three objects per image
    assert sorted({r["category_id"] for r in classes}) == [0, 1, 2, 3]
    assert all(r["key"] == f"{r['image_key']}#class{r['category_id']}" for r in classes)
    assert all(r["iou_coarse"] is not None and r["mba_refined"] is not None for r in classes)
    assert all(0 < r["trust_score"] < 1 for r in classes)
    for r in images:
        im = Image.open(r["output_uri"])
        assert im.mode == "P" and im.size == (W, H)
        assert bytes(im.getpalette()) == PALETTE[: len(im.getpalette())]
        labels = np.asarray(im)
        truth = data["truths"][r["key"]]
        coarse = np.asarray(Image.open(r["mask_uri"]))
        # ignore pixels stay ignore where the upsampled input has them; nothing else becomes 255
        up = np.kron(coarse, np.ones((8, 8), np.uint8))
        assert ((labels == 255) == (up == 255)).all()
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
        assert (labels == truth).mean() > 0.5

    from jobs.evaluate import main as evaluate

    capsys.readouterr()
    assert evaluate([out, "--labelmaps", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["relabel"]
    assert report["images"] == 2
    assert report["before"]["miou"] is not None and report["after"]["miou"] is not None

    # the HTML report is for refine outputs: it says so instead of drawing broken overlays
    from jobs.report import main as html_report

    assert html_report([out]) != 0
    assert "samsr relabel output" in capsys.readouterr().err


def test_relabel_cli_config_errors_before_any_work(tmp_path, capsys, v21_checkpoint):
    from jobs.relabel import main

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "nolist.json").write_text(json.dumps({"images": {}, "annotations": []}))
    cases = [
        (["--coco", str(tmp_path / "nope.json"), "--images", str(tmp_path), "--output", str(tmp_path / "o")],
         "relabel.coco: file not found"),
        (["--coco", str(tmp_path / "bad.json"), "--images", str(tmp_path), "--output", str(tmp_path / "o")],
         "relabel.coco: not valid JSON"),
        (["--coco", str(tmp_path / "nolist.json"), "--images", str(tmp_path), "--output",
          str(tmp_path / "o")], "relabel.coco: COCO file: 'images' must be a list"),
        (["--labelmaps", str(tmp_path), "--output", str(tmp_path / "o"), "--method", "crm",
          "--checkpoint", v21_checkpoint], "model.name"),
        (["--labelmaps", str(tmp_path), "--coco", "x.json", "--output", "o"], "give one input kind"),
        (["--labelmaps", str(tmp_path), "--output", "o", "--set", "relabel.min_size=0"], "relabel.min_size"),
        (["--labelmaps", str(tmp_path), "--output", "o", "--set", "relabel.margin_ratio=50"],
         "relabel.margin_ratio"),
        (["--labelmaps", str(tmp_path), "--output", "o", "--set", "relabel.bogus=1"],
         "relabel.bogus: unknown key"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err, (argv, err)
    assert not (tmp_path / "o").exists()  # nothing was written
    from jobs.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli(["relabel", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--coco", "--images", "--labelmaps", "--gt-coco", "--scale", "--output"):
        assert flag in text
