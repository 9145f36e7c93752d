"""``samsr relabel`` on Ray Data: multi-object annotations in, re-labeled annotations out.

Dataflow (one item per image; the driver plans from the annotation file alone, never pixels)::

    plan (driver: parse the COCO JSON or list the label maps) -> from_items(images)
      -> decode (CPU tasks: image, label map) -> proposals (actor pool, samsr-v2.1 only; once
      per image, shared by all its objects) -> relabel (refiner actor pool: every object of the
      image in its own window, one at a time; writes the image's output) -> manifest rows
      (one per object, then one per image) streamed to the driver
      -> COCO: the output JSON merged from the per-image parts once every image is done

Outputs under ``output.prefix``: ``coco_parts/<key>.json`` (per image: its record and
annotations) and the merged ``<output_name>`` (COCO), or ``labels/<key>.png`` (label maps);
``manifest/part-*.parquet`` as for ``samsr refine`` (``row_kind`` image / instance / class).
Resume is per image: an image with an ``ok`` image row is skipped by a rerun (its part is
merged again). Annotations whose image id is unknown get error rows from the driver and are
kept unchanged in the output.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import RefineJobConfig, with_absolute_paths
from pipeline.plan import StagePlan, plan_job
from pipeline.progress import ManifestWriter, alive_nodes

__all__ = ["RelabelPlan", "plan_relabel", "run_relabel", "RelabelResult", "format_relabel", "merge_coco",
           "stall_timeout"]


@dataclass
class RelabelPlan:
    """What the driver knows before any pixel is read: the items (one per image), the rows it
    writes itself (annotations of unknown images, duplicate keys) and the COCO document."""

    kind: str  # "coco" | "labelmap"
    items: list[dict]  # item metas (dicts), one per image, in input order
    driver_rows: list[dict]
    doc: dict | None = None
    output_uri: str | None = None
    n_objects: int = 0


def _read_json(uri: str, key: str) -> Any:
    from pipeline.io import read_bytes

    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise ValueError(f"{key}: file not found: {uri}") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ValueError(f"{key}: not valid JSON ({e})") from None


def _driver_row(key: str, error_type: str, message: str, **fields: Any) -> dict:
    return {"key": key, "status": "error", "error_type": error_type, "error_message": message, **fields}


def plan_relabel(cfg: RefineJobConfig) -> RelabelPlan:
    """Plan a relabel job (ValueError naming the key when the annotation file or input cannot
    be used: nothing is processed)."""
    from pipeline.io import join_uri, list_samples, safe_key

    if cfg.relabel.coco is None:
        suffixes = {k: getattr(cfg.input, k) for k in ("image_suffix", "mask_suffix", "gt_suffix")}
        try:
            refs = list_samples(cfg.input.uri, cfg.input.layout,
                                **{k: v for k, v in suffixes.items() if v is not None})
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"input.uri: {e}") from e
        if cfg.input.limit:
            refs = refs[: cfg.input.limit]
        items = [{"key": r.key, "kind": "labelmap", "ref": r.to_dict(), "image_uri": r.image_uri,
                  "mask_uri": r.mask_uri, "gt_uri": r.gt_uri} for r in refs]
        return RelabelPlan("labelmap", items, [])

    from pipeline.relabel.coco import index_coco

    doc = _read_json(cfg.relabel.coco, "relabel.coco")
    try:
        index = index_coco(doc)
    except ValueError as e:
        raise ValueError(f"relabel.coco: {e}") from e
    gt_by_image: dict[Any, list] = {}
    if cfg.relabel.gt_coco:
        gdoc = _read_json(cfg.relabel.gt_coco, "relabel.gt_coco")
        try:
            gindex = index_coco(gdoc)
        except ValueError as e:
            raise ValueError(f"relabel.gt_coco: {e}") from e
        gt_anns = {}
        for image_id, positions in gindex.by_image.items():
            rec = gindex.images[image_id]
            for j in positions:
                a = gdoc["annotations"][j]
                if isinstance(a, dict) and "id" in a and not a.get("iscrowd", 0):
                    gt_anns[a["id"]] = (a, [rec.get("height"), rec.get("width")])
        for image_id, positions in index.by_image.items():
            gt_by_image[image_id] = [[doc["annotations"][j]["id"], *gt_anns[doc["annotations"][j]["id"]]]
                                     for j in positions if doc["annotations"][j].get("id") in gt_anns]
    categories = sorted(index.categories, key=str)
    items, rows, seen = [], [], set()
    for image_id, rec in index.images.items():
        key = rec["file_name"]
        positions = index.by_image.get(image_id, [])
        if safe_key(key) in seen:
            rows.append(_driver_row(key + f"#image{image_id}", "duplicate_key",
                                    f"image {image_id}: file_name {key!r} is used by an earlier image record",
                                    row_kind="image", image_key=key,
                                    image_id=image_id if isinstance(image_id, int) else None))
            continue
        seen.add(safe_key(key))
        item = {"key": key, "kind": "coco", "image_id": image_id, "record": rec,
                "image_uri": join_uri(cfg.input.uri, key),
                "anns": [doc["annotations"][j] for j in positions], "categories": categories}
        if cfg.relabel.gt_coco:
            item["gt"] = gt_by_image.get(image_id, [])
        items.append(item)
    for j in index.orphans:
        ann = doc["annotations"][j]
        aid = ann.get("id") if isinstance(ann, dict) else None
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        rows.append(_driver_row(
            f"image_id={image_id}#ann{aid}", "unknown_image",
            f"annotation {aid}: image_id {image_id!r} is not in 'images' (kept unchanged)",
            row_kind="instance", annotation_id=aid if isinstance(aid, int) else None,
            category_id=ann.get("category_id") if isinstance(ann, dict) and isinstance(
                ann.get("category_id"), int) else None))
    name = cfg.relabel.output_name or cfg.relabel.coco.rstrip("/").rsplit("/", 1)[-1]
    return RelabelPlan("coco", items, rows, doc=doc, output_uri=join_uri(cfg.output.prefix, name),
                       n_objects=index.n_annotations)


class _RelabelActor:
    """The refiner, loaded once per actor; refines every object of an image (pipeline.relabel.stages)."""

    def __init__(self, model_name: str, checkpoint: str, options: dict, device: str, threads: int,
                 output_prefix: str, static: dict, rule: dict, scale: float | None,
                 ignore: int | None, accept: dict | None = None) -> None:
        from pipeline.relabel.crops import CropRule
        from pipeline.workers import LoadedRefiner, ray_node_id

        self.refiner = LoadedRefiner(model_name, checkpoint, options, device, threads, accept)
        self.node = ray_node_id()
        self.kwargs = dict(output_prefix=output_prefix, static=static, rule=CropRule(**rule), scale=scale,
                           ignore=ignore)

    def __call__(self, batch: dict) -> dict:
        import torch

        from pipeline.relabel.stages import relabel_refine_batch

        with torch.inference_mode():
            return relabel_refine_batch(batch, refine_fn=self.refiner, node=self.node, **self.kwargs)


def _rule(cfg: RefineJobConfig) -> dict:
    r = cfg.relabel
    return {"margin_ratio": r.margin_ratio, "min_margin": r.min_margin, "min_size": r.min_size}


def build_relabel_dataset(items: list[dict], cfg: RefineJobConfig, plan: StagePlan, static: dict):
    """The lazy Ray Data pipeline over relabel items; rows out: ``{"row": json}``."""
    import ray.data as rd

    from pipeline.relabel.stages import relabel_decode_batch
    from pipeline.workers import ProposalWorker, accept_kwargs, proposal_kwargs, refine_options

    rows = [{"meta": json.dumps(it)} for it in items]
    per_block = max(1, math.ceil(len(rows) / 10_000))
    ds = rd.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))
    ds = ds.map_batches(relabel_decode_batch, batch_size=1, batch_format="numpy", num_cpus=plan.task_cpus,
                        compute=rd.TaskPoolStrategy(size=plan.decode_tasks),
                        fn_kwargs={"max_pixels": cfg.input.max_pixels})
    pool = dict(max_tasks_in_flight_per_actor=plan.tasks_per_actor)
    if cfg.uses_sam:
        ds = ds.map_batches(
            ProposalWorker, batch_size=1, batch_format="numpy", num_cpus=plan.actor_cpus,
            num_gpus=plan.sam_gpus,
            compute=rd.ActorPoolStrategy(size=plan.sam_actors, **pool),
            fn_constructor_kwargs=proposal_kwargs(cfg, plan.torch_threads, v1=False),
        )
    return ds.map_batches(
        _RelabelActor, batch_size=1, batch_format="numpy", num_cpus=plan.actor_cpus,
        num_gpus=plan.refine_gpus, **({"memory": plan.refine_memory} if plan.refine_memory else {}),
        compute=rd.ActorPoolStrategy(size=plan.refine_actors, **pool),
        fn_constructor_kwargs=dict(
            model_name=cfg.model.name, checkpoint=cfg.model.checkpoint, options=refine_options(cfg),
            device=cfg.refine.device, threads=plan.torch_threads, output_prefix=cfg.output.prefix,
            static=static, rule=_rule(cfg), scale=cfg.relabel.scale, ignore=cfg.relabel.ignore,
            accept=accept_kwargs(cfg),
        ),
    )


#: extra seconds the stall watchdog allows per object of the largest image: rows arrive once a whole
#: image is done, and a CPU worker refines an instance of a 6k image in about 1 s (benchmark relabel)
STALL_S_PER_OBJECT = 5.0
#: objects assumed per label map (classes are only known once it is decoded)
LABELMAP_OBJECTS = 32


def stall_timeout(base_s: float, items: list[dict]) -> float:
    """The watchdog's limit for a relabel job: ``ray.stall_timeout_s`` plus
    STALL_S_PER_OBJECT for each object of its largest image (an image's rows come together)."""
    most = max((len(it.get("anns") or []) if it["kind"] == "coco" else LABELMAP_OBJECTS for it in items),
               default=0)
    return base_s + STALL_S_PER_OBJECT * most


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


def _write_coco_output(plan: RelabelPlan, output_prefix: str, job_id: str) -> tuple[str, int]:
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


def _write_job_record(cfg: RefineJobConfig, plan: RelabelPlan) -> str:
    """``<prefix>/relabel.json``: where this job's input and output are (read by samsr evaluate)."""
    from pipeline.io import join_uri, write_bytes
    from pipeline.relabel.quality import JOB_RECORD

    record = {"kind": plan.kind, "job_id": cfg.job_id, "input": cfg.input.uri, "coco": cfg.relabel.coco,
              "gt_coco": cfg.relabel.gt_coco, "output": plan.output_uri, "scale": cfg.relabel.scale,
              "ignore": cfg.relabel.ignore}
    return write_bytes(join_uri(cfg.output.prefix, JOB_RECORD), json.dumps(record, indent=1).encode())


@dataclass
class RelabelResult:
    job_id: str
    run_id: str
    output_prefix: str
    kind: str
    images: int
    already_done: int
    processed: int
    ok: int
    error: int
    wall_s: float
    plan_s: float
    plan: StagePlan | None
    summary: dict[str, Any]
    objects: Counter
    output_uri: str | None = None
    merged_images: int = 0


def _object_summary(output_prefix: str, job_id: str) -> tuple[dict, Counter]:
    import pyarrow.compute as pc

    from pipeline.io import read_manifest
    from pipeline.summary import summarize_manifest

    table = read_manifest(output_prefix)
    if table.num_rows:
        table = table.filter(pc.invert(pc.fill_null(pc.equal(table.column("row_kind"), "image"), False)))
    summary = summarize_manifest(table, job_id=job_id)
    return summary, Counter(ok=summary["ok"], error=summary["error"], skipped=summary["skipped"])


def run_relabel(cfg: RefineJobConfig, *, on_row: Callable[[dict], None] | None = None) -> RelabelResult:
    """Run a relabel job to completion (manifest, per-image outputs and, for COCO, the merged file)."""
    import ray

    from pipeline.io import resume_state
    from pipeline.ray_runner import (
        _configure_data_context,
        _static_fields,
        init_ray,
        shutdown_ray,
        stream_rows,
    )

    t_start = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    plan = plan_relabel(cfg)
    plan_s = time.perf_counter() - t_start
    _write_job_record(cfg, plan)
    done, attempts = resume_state(cfg.output.prefix)
    todo = [it for it in plan.items if it["key"] not in done]
    for it in todo:
        it["attempt"] = attempts[it["key"]] + 1
    writer = ManifestWriter(cfg.output.prefix, run_id, cfg.ray.manifest_rows_per_part,
                            cfg.ray.manifest_flush_s)
    static = _static_fields(cfg, run_id)
    for row in plan.driver_rows:
        if row["key"] not in done:
            fixed = {k: static.get(k) for k in ("job_id", "run_id", "method", "model_name", "model_hash")}
            writer.add({**fixed, "attempt": attempts[row["key"]] + 1, **row})
    writer.flush()
    counts: Counter = Counter()
    stage_plan = None
    if todo:
        started = init_ray(cfg.ray)
        try:
            res = ray.cluster_resources()
            nodes = alive_nodes()
            stage_plan = plan_job(cfg, res, nodes)
            _configure_data_context(cfg)
            ds = build_relabel_dataset(todo, cfg, stage_plan, static)
            counts = stream_rows(ds, cfg, stage_plan, nodes, writer, len(todo), on_row=on_row, desc="relabel",
                                 counts_item=lambda row: row.get("row_kind") == "image",
                                 stall_timeout_s=stall_timeout(cfg.ray.stall_timeout_s, todo))
        finally:
            shutdown_ray(started)
    output_uri, merged = None, 0
    if plan.kind == "coco":
        output_uri, merged = _write_coco_output(plan, cfg.output.prefix, cfg.job_id)
    summary, objects = _object_summary(cfg.output.prefix, cfg.job_id)
    return RelabelResult(
        job_id=cfg.job_id, run_id=run_id, output_prefix=cfg.output.prefix, kind=plan.kind,
        images=len(plan.items), already_done=len(plan.items) - len(todo),
        processed=counts["ok"] + counts["error"], ok=counts["ok"], error=counts["error"],
        wall_s=time.perf_counter() - t_start, plan_s=plan_s, plan=stage_plan, summary=summary,
        objects=objects, output_uri=output_uri, merged_images=merged,
    )


def format_relabel(result: RelabelResult) -> str:
    """The final summary: images, objects, the output and the coarse-vs-refined table."""
    from pipeline.summary import format_counts, format_quality_table

    s = result.summary
    errors = ", ".join(f"{k}={v}" for k, v in sorted(s["error_types"].items())) or "-"
    what = "instances" if result.kind == "coco" else "classes"
    pairs = [
        ("job", f"{result.job_id} (run {result.run_id})"),
        ("output", result.output_uri or result.output_prefix),
        ("images listed", result.images),
        ("already done (skipped)", result.already_done),
        ("images this run", f"{result.processed} (ok {result.ok}, failed {result.error})"),
        (f"{what} (job total)", f"ok {s['ok']}, failed {s['error']}"
         + (f", crowd regions copied {s['skipped']}" if result.kind == "coco" else "")),
        ("object failures by type", errors),
        ("planning", f"{result.plan_s:.2f} s"),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    if result.kind == "coco":
        pairs.append(("images merged into the output", result.merged_images))
    return format_counts(pairs) + "\n\n" + format_quality_table(s, unit=what)
