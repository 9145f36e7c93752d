"""Quality of a finished relabel job against ground truth, before (the input annotations) and
after (the output): what ``samsr evaluate OUTPUT --coco-gt GT`` and ``--labelmaps`` print.

- COCO: mask AP (pycocotools COCOeval, ``pipeline.relabel.evaluation.coco_mask_ap``) of the input
  annotations and of the output annotations, both brought to the ground truth's image sizes; and
  over every instance present in all three, dataset IoU (total intersection / total union), mean
  mBA and mean Boundary IoU (``pipeline.metrics`` definitions, full-image masks).
- Label maps: mIoU over classes and mean mBA (``evaluation.miou`` / ``labelmap_mba``) of the
  nearest-upsampled input label maps and of the output label maps, over the images of the job
  that have ground truth.

The job's own record ``<prefix>/relabel.json`` (written when it starts) says where its input was.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["read_job_record", "coco_quality", "labelmap_quality", "JOB_RECORD"]

JOB_RECORD = "relabel.json"


def read_job_record(prefix: str) -> dict[str, Any]:
    """``<prefix>/relabel.json``: kind, inputs and output of the relabel job under ``prefix``."""
    from pipeline.io import join_uri, read_bytes

    uri = join_uri(prefix, JOB_RECORD)
    try:
        return json.loads(read_bytes(uri))
    except FileNotFoundError:
        raise ValueError(f"{prefix}: no {JOB_RECORD} (not the output of samsr relabel)") from None


def _load(uri: str) -> dict:
    from pipeline.io import read_bytes

    return json.loads(read_bytes(uri))


def coco_quality(prefix: str, gt_uri: str) -> dict[str, Any]:
    """{"ap": {"before": {...}, "after": {...}}, "instances": n, "before"/"after": {dataset_iou,
    mean_mba, mean_biou}, "left_out": {"before": n, "after": n}} for the COCO relabel job under
    ``prefix`` against the ground-truth COCO file ``gt_uri``."""
    from pipeline.metrics import image_metrics
    from pipeline.relabel.coco import AnnotationError
    from pipeline.relabel.coco_masks import annotations_at, decode_full
    from pipeline.relabel.evaluation import coco_mask_ap

    record = read_job_record(prefix)
    if record.get("kind") != "coco":
        raise ValueError(f"{prefix}: a {record.get('kind')} relabel job, not COCO")
    gt = _load(gt_uri)
    sizes = {r["id"]: (int(r["height"]), int(r["width"])) for r in gt["images"]}
    before, left_before = annotations_at(_load(record["coco"]), sizes, record.get("scale"))
    after, left_after = annotations_at(_load(record["output"]), sizes)
    out: dict[str, Any] = {"ap": {"before": coco_mask_ap(gt, before), "after": coco_mask_ap(gt, after)},
                           "left_out": {"before": left_before, "after": left_after}}

    def masks(anns):
        return {a["id"]: a for a in anns if not a.get("iscrowd", 0)}

    b, a = masks(before), masks(after)
    totals = {tag: {"i": 0, "u": 0, "mba": [], "biou": []} for tag in ("before", "after")}
    n = 0
    for g in gt["annotations"]:
        if g.get("iscrowd", 0) or g.get("image_id") not in sizes:
            continue
        if g.get("id") not in b or g.get("id") not in a:
            continue
        hw = sizes[g["image_id"]]
        try:
            truth = decode_full(g, hw, hw) > 0
        except AnnotationError:
            continue
        n += 1
        for tag, anns in (("before", b), ("after", a)):
            pred = decode_full(anns[g["id"]], hw, hw) > 0
            m = image_metrics(pred, truth)
            t = totals[tag]
            t["i"] += m["intersection"]
            t["u"] += m["union"]
            for k in ("mba", "biou"):
                if m[k] is not None:
                    t[k].append(m[k])
    out["instances"] = n
    for tag, t in totals.items():
        out[tag] = {"dataset_iou": t["i"] / t["u"] if t["u"] else None,
                    "mean_mba": float(np.mean(t["mba"])) if t["mba"] else None,
                    "mean_biou": float(np.mean(t["biou"])) if t["biou"] else None}
    return out


def labelmap_quality(prefix: str, job_id: str | None = None) -> dict[str, Any]:
    """{"images": n, "before"/"after": {"miou", "mean_mba"}, "per_class": {...}} over the images
    of the label-map relabel job under ``prefix`` whose latest image row is ok and has ground truth."""
    import pyarrow.compute as pc

    from pipeline.io import latest_rows, read_bytes, read_manifest
    from pipeline.relabel.evaluation import labelmap_counts, labelmap_mba, miou
    from pipeline.relabel.labelmaps import read_label_map, upsample_labels

    record = read_job_record(prefix)
    if record.get("kind") != "labelmap":
        raise ValueError(f"{prefix}: a {record.get('kind')} relabel job, not label maps")
    ignore = record.get("ignore")
    table = read_manifest(prefix)
    if job_id is not None and table.num_rows:
        table = table.filter(pc.equal(table.column("job_id"), job_id))
    if table.num_rows:
        table = table.filter(pc.fill_null(pc.equal(table.column("row_kind"), "image"), False))
    rows = [r for r in latest_rows(table).to_pylist() if r["status"] == "ok" and r.get("gt_uri")]
    counts: dict[str, list] = {"before": [], "after": []}
    mbas: dict[str, list] = {"before": [], "after": []}
    for r in rows:
        gt = read_label_map(read_bytes(r["gt_uri"]), r["key"]).values
        coarse = read_label_map(read_bytes(r["mask_uri"]), r["key"]).values
        maps = {"before": upsample_labels(coarse, *gt.shape), "after": read_label_map(
            read_bytes(r["output_uri"]), r["key"]).values}
        for tag, pred in maps.items():
            counts[tag].append(labelmap_counts(pred, gt, ignore))
            v = labelmap_mba(pred, gt, ignore)
            if v is not None:
                mbas[tag].append(v)
    out: dict[str, Any] = {"images": len(rows)}
    for tag in ("before", "after"):
        m = miou(counts[tag])
        out[tag] = {"miou": m["miou"], "mean_mba": 100.0 * float(np.mean(mbas[tag])) if mbas[tag] else None,
                    "per_class": m["per_class"]}
    return out
