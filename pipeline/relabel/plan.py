"""Planning a relabel job on the driver, before any pixel is read: the items (one per image), the
rows the driver writes itself (annotations of unknown images, duplicate file names) and the COCO
document; and the stall limit that follows from the largest image. Storage is only read (the
annotation file, the input listing); no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: config validates relabel's crop rule, not the reverse
    from pipeline.config import RefineJobConfig

__all__ = ["RelabelPlan", "plan_relabel", "stall_timeout", "STALL_S_PER_OBJECT", "LABELMAP_OBJECTS"]


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
