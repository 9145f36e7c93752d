"""A finished ``samsr relabel`` COCO job, made without Ray: the relabel stage functions
(``pipeline.relabel.stages``) run in this process on scenes of ``tests.relabel.scenes``, with a
deterministic refiner (a blur of the coarse window: the review loop does not care what refined
the masks), then the merged COCO file, ``relabel.json`` and the manifest as the runner writes them."""

from __future__ import annotations

import json

import cv2
import numpy as np

from pipeline.io import join_uri, write_bytes, write_manifest_part
from pipeline.relabel.crops import CropRule
from pipeline.relabel.stages import relabel_decode_batch, relabel_refine_batch
from tests.relabel.scenes import write_coco_dataset

JOB = "relabel-review-test"


def blur_refiner(image, coarse, colours):
    """(h, w) float probabilities: the coarse window blurred, so the refined mask differs from it."""
    return cv2.GaussianBlur(coarse.astype(np.float32) / 255.0, (0, 0), 2.0) ** 0.7


def make_coco_job(root: str, *, n_images: int = 1, height: int = 96, width: int = 128) -> dict:
    """Inputs under ``root/in``, the job's output under ``root/out``. Returns the dataset dict of
    ``write_coco_dataset`` plus ``out`` and ``output`` (the merged COCO file)."""
    data = write_coco_dataset(f"{root}/in", n_images, height=height, width=width, factor=4)
    out = f"{root}/out"
    doc = data["doc"]
    static = {"job_id": JOB, "run_id": "run-1", "method": "samsr-v1", "model_name": "blur",
              "model_hash": None}
    rows, parts = [], {}
    categories = sorted(c["id"] for c in doc["categories"])
    for rec in doc["images"]:
        meta = {"key": rec["file_name"], "kind": "coco", "image_id": rec["id"], "record": rec, "attempt": 1,
                "image_uri": join_uri(data["images"], rec["file_name"]), "categories": categories,
                "anns": [a for a in doc["annotations"] if a["image_id"] == rec["id"]]}
        batch = {"meta": np.asarray([json.dumps(meta)], dtype=object),
                 "image": np.zeros((1, 0, 0, 3), np.uint8), "coarse": np.zeros((1, 0, 0), np.uint8),
                 "gt": np.zeros((1, 0, 0), np.uint8)}
        decoded = relabel_decode_batch(batch, max_pixels=10**8)
        result = relabel_refine_batch(decoded, refine_fn=blur_refiner, output_prefix=out, static=static,
                                      rule=CropRule())
        rows.extend(json.loads(r) for r in result["row"])
    for row in rows:
        if row.get("row_kind") == "image":
            assert row["status"] == "ok", row
            part = json.loads(open(row["output_uri"]).read())
            parts[part["image_id"]] = part
    merged = {k: v for k, v in doc.items() if k not in ("images", "annotations")}
    merged["images"] = [parts[r["id"]]["image"] for r in doc["images"]]
    queues = {i: iter(p["annotations"]) for i, p in parts.items()}
    merged["annotations"] = [next(queues[a["image_id"]]) for a in doc["annotations"]]
    output = write_bytes(join_uri(out, "coarse.json"), json.dumps(merged).encode())
    record = {"kind": "coco", "job_id": JOB, "input": data["images"], "coco": data["coco"], "gt_coco": None,
              "output": output, "scale": None, "ignore": 255}
    write_bytes(join_uri(out, "relabel.json"), json.dumps(record).encode())
    write_manifest_part(rows, out, "run-1-00000")
    return {**data, "out": out, "output": output}


def make_labelmap_job(root: str, *, n_images: int = 1, height: int = 96, width: int = 128) -> dict:
    """Label maps (palette PNGs at 1/4 size, ground truth, a 255 ignore band) under ``root/in``
    relabeled into ``root/out`` with :func:`blur_refiner`, as ``make_coco_job`` does."""
    from pipeline.io import list_samples
    from tests.relabel.scenes import write_labelmap_dataset

    data = write_labelmap_dataset(f"{root}/in", n_images, height=height, width=width, factor=4)
    out = f"{root}/out"
    static = {"job_id": JOB, "run_id": "run-1", "method": "samsr-v1", "model_name": "blur"}
    rows = []
    for ref in list_samples(data["uri"], "prefix"):
        meta = {"key": ref.key, "kind": "labelmap", "ref": ref.to_dict(), "image_uri": ref.image_uri,
                "mask_uri": ref.mask_uri, "gt_uri": ref.gt_uri, "attempt": 1}
        batch = {"meta": np.asarray([json.dumps(meta)], dtype=object),
                 "image": np.zeros((1, 0, 0, 3), np.uint8), "coarse": np.zeros((1, 0, 0), np.uint8),
                 "gt": np.zeros((1, 0, 0), np.uint8)}
        decoded = relabel_decode_batch(batch, max_pixels=10**8)
        result = relabel_refine_batch(decoded, refine_fn=blur_refiner, output_prefix=out, static=static,
                                      rule=CropRule(), ignore=255)
        rows.extend(json.loads(r) for r in result["row"])
    assert all(r["status"] == "ok" for r in rows), rows
    record = {"kind": "labelmap", "job_id": JOB, "input": data["uri"], "coco": None, "gt_coco": None,
              "output": out, "scale": None, "ignore": 255}
    write_bytes(join_uri(out, "relabel.json"), json.dumps(record).encode())
    write_manifest_part(rows, out, "run-1-00000")
    return {**data, "out": out}
