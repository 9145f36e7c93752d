"""What a relabel job leaves on storage besides masks and manifest: the merged COCO file (from
the per-image parts of every image whose latest image row is ok), the job record read by
``samsr evaluate``, and the per-object summary. No Ray.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from pipeline.relabel.plan import RelabelPlan

if TYPE_CHECKING:  # annotations only: config validates relabel's crop rule, not the reverse
    from pipeline.config import RefineJobConfig

__all__ = ["merge_coco", "write_coco_output", "write_job_record", "object_summary"]


def _latest_image_rows(output_prefix: str, job_id: str) -> dict[str, dict]:
    """Latest row per image key (row_kind image) of this job."""
    import pyarrow.compute as pc

    from pipeline.io import latest_rows, read_manifest

    table = read_manifest(output_prefix)
    if table.num_rows == 0:
        return {}
    table = table.filter(pc.and_(pc.equal(table.column("job_id"), job_id),
                                 pc.equal(table.column("row_kind"), "image")))
    return {r["key"]: r for r in latest_rows(table).to_pylist()}


def merge_coco(doc: dict, parts: dict[Any, dict]) -> dict:
    """The output COCO document: ``doc`` with, for every image id in ``parts``
    (``{image_id: {"image": record, "annotations": [...]}}``), its image record and its
    annotations (same order) replaced; everything else (other images, annotations of unknown
    images, categories, info, licenses, extra keys) kept as it was."""
    out = {k: v for k, v in doc.items() if k not in ("images", "annotations")}
    out["images"] = [parts[r["id"]]["image"] if r.get("id") in parts else r for r in doc["images"]]
    queues = {image_id: iter(p["annotations"]) for image_id, p in parts.items()}
    anns = []
    for ann in doc["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id in queues:
            anns.append(next(queues[image_id]))
        else:
            anns.append(ann)
    out["annotations"] = anns
    return out


def write_coco_output(plan: RelabelPlan, output_prefix: str, job_id: str) -> tuple[str, int]:
    """Merge the parts of every image whose latest image row is ok; returns (URI, images merged)."""
    from pipeline.io import open_fs, write_bytes
    from pipeline.relabel.stages import coco_part_uri

    latest = _latest_image_rows(output_prefix, job_id)
    wanted = [it for it in plan.items if latest.get(it["key"], {}).get("status") == "ok"]
    uris = [coco_part_uri(output_prefix, it["key"]) for it in wanted]
    parts: dict[Any, dict] = {}
    if uris:
        fs, _ = open_fs(uris[0])
        paths = [open_fs(u)[1] for u in uris]
        blobs = fs.cat(paths)  # concurrent on object stores
        for it, path in zip(wanted, paths):
            part = json.loads(blobs[path])
            parts[it["image_id"]] = part
    merged = merge_coco(plan.doc, parts)
    uri = write_bytes(plan.output_uri, json.dumps(merged).encode())
    return uri, len(parts)


def write_job_record(cfg: RefineJobConfig, plan: RelabelPlan) -> str:
    """``<prefix>/relabel.json``: where this job's input and output are (read by samsr evaluate)."""
    from pipeline.io import join_uri, write_bytes
    from pipeline.relabel.quality import JOB_RECORD

    record = {"kind": plan.kind, "job_id": cfg.job_id, "input": cfg.input.uri, "coco": cfg.relabel.coco,
              "gt_coco": cfg.relabel.gt_coco, "output": plan.output_uri, "scale": cfg.relabel.scale,
              "ignore": cfg.relabel.ignore}
    return write_bytes(join_uri(cfg.output.prefix, JOB_RECORD), json.dumps(record, indent=1).encode())


def object_summary(output_prefix: str, job_id: str) -> tuple[dict, Counter]:
    import pyarrow.compute as pc

    from pipeline.io import read_manifest
    from pipeline.summary import summarize_manifest

    table = read_manifest(output_prefix)
    if table.num_rows:
        table = table.filter(pc.invert(pc.fill_null(pc.equal(table.column("row_kind"), "image"), False)))
    summary = summarize_manifest(table, job_id=job_id)
    return summary, Counter(ok=summary["ok"], error=summary["error"], skipped=summary["skipped"])
