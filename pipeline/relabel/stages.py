"""The per-image work of ``samsr relabel`` as batch functions over dicts of numpy arrays, like
``pipeline.stages`` for ``samsr refine`` (``pipeline.runner.relabel`` runs them on Ray; they
know nothing of Ray).

One item is one image with all its objects. Columns (the names of ``pipeline.stages``, so the
proposal stage ``pipeline.stages.sam_batch`` runs unchanged between the two):

  ``meta``        str: JSON of the item (key, kind ``coco``/``labelmap``, URIs, and for COCO the
                  image record, its annotations and their ground truth)
  ``image``       (H, W, 3) uint8 RGB
  ``coarse``      label maps: (h, w) class ids (uint8/uint16/int32) as stored; COCO: (0, 0)
  ``gt``          label maps: (H, W) ground-truth class ids or (0, 0); COCO: (0, 0)
  ``sam_colors``  (h', w', 3) uint8 proposal colour map (samsr-v2.1), or absent / (0, 0, 3)

``relabel_refine_batch`` refines every object of each image (one window at a time), writes the
image's output (a COCO part ``<prefix>/coco_parts/<safe_key>.json`` or a label map
``<prefix>/labels/<safe_key>.png``) and returns the manifest rows: one per object, then one
per image (written last: an ``ok`` image row means its output exists and resume skips it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.stages import _STATIC_ROW_FIELDS, _fail, _ms, column, error_meta, rows_of

__all__ = ["relabel_decode_batch", "relabel_refine_batch", "window_refiner", "coco_part_uri", "label_map_uri",
           "object_key"]

#: refine_fn(image (h, w, 3) uint8, coarse (h, w) uint8 0..255, colours (h, w, 3) uint8 | None)
#: -> (h, w) float32 probabilities in [0, 1]
RefineFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]

_EMPTY = {"image": (0, 0, 3), "coarse": (0, 0), "gt": (0, 0)}


def coco_part_uri(output_prefix: str, key: str) -> str:
    from pipeline.io import join_uri, safe_key

    return join_uri(output_prefix, "coco_parts", f"{safe_key(key)}.json")


def label_map_uri(output_prefix: str, key: str) -> str:
    from pipeline.io import join_uri, safe_key

    return join_uri(output_prefix, "labels", f"{safe_key(key)}.png")


def object_key(image_key: str, kind: str, object_id: Any) -> str:
    """Manifest key of an object: ``<image key>#ann<id>`` (COCO) or ``<image key>#class<id>``."""
    return f"{image_key}#{'ann' if kind == 'coco' else 'class'}{object_id}"


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    out = {"meta": np.asarray([json.dumps(r["meta"]) for r in rows], dtype=object)}
    for name, shape in _EMPTY.items():
        values = [r.get(name) for r in rows]
        out[name] = column([v if v is not None else np.zeros(shape, np.uint8) for v in values])
    return out


def _encode_transparency(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def _decode_transparency(value: Any) -> Any:
    if isinstance(value, dict) and "hex" in value:
        return bytes.fromhex(value["hex"])
    return value


def relabel_decode_batch(batch: dict[str, np.ndarray], *, max_pixels: int) -> dict[str, np.ndarray]:
    """Items -> decoded images (and label maps). A failure makes the item an error (its image
    row names the reason; its objects keep their input annotation)."""
    from pipeline.io import SampleError, SampleRef, decode_image, read_bytes
    from pipeline.relabel.labelmaps import read_label_map

    def read(meta: dict, role: str, missing: str, what: str) -> bytes:
        key = meta["key"]
        if "ref" in meta:  # label maps: any input layout (tar members have offsets)
            uri, offset, length = SampleRef.from_dict(meta["ref"]).source(role)
        else:
            uri, offset, length = meta[f"{role}_uri"], None, None
        try:
            return read_bytes(uri, offset, length)
        except FileNotFoundError:
            raise SampleError(key, missing, f"{what} {meta[role + '_uri']!r} does not exist") from None
        except Exception as exc:
            raise SampleError(key, "read_error", f"reading {what} {uri!r} failed: {exc!r}") from exc

    out = []
    for row in rows_of(batch):
        meta = row["meta"]
        key = meta["key"]
        new: dict[str, Any] = {"meta": meta}
        t0 = time.perf_counter()
        try:
            image = decode_image(read(meta, "image", "missing_image", "image"), key=key,
                                 max_pixels=max_pixels, source=meta["image_uri"])
            meta["height"], meta["width"] = int(image.shape[0]), int(image.shape[1])
            new["image"] = image
            if meta["kind"] == "labelmap":
                lm = read_label_map(read(meta, "mask", "missing_mask", "label map"), key,
                                    max_pixels=max_pixels)
                h, w = lm.values.shape
                meta.update(coarse_height=h, coarse_width=w, label_mode=lm.mode,
                            label_palette=lm.palette.hex() if lm.palette is not None else None,
                            label_transparency=_encode_transparency(lm.transparency))
                expected = w * image.shape[0] / image.shape[1]
                if abs(h - expected) > max(1.0, 0.02 * expected):
                    ih, iw = image.shape[:2]
                    raise SampleError(key, "aspect_mismatch", f"label map {meta.get('mask_uri')!r} {w}x{h} "
                                      f"vs image {meta.get('image_uri')!r} {iw}x{ih}: aspect ratios differ")
                new["coarse"] = lm.values
                if meta.get("gt_uri"):
                    gt = read_label_map(read(meta, "gt", "missing_gt", "ground truth"), key,
                                        max_pixels=max_pixels).values
                    if gt.shape != image.shape[:2]:
                        raise SampleError(key, "gt_size_mismatch",
                                          f"ground truth {gt.shape[1]}x{gt.shape[0]} "
                                          f"!= image {image.shape[1]}x{image.shape[0]}")
                    new["gt"] = gt
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            _fail(meta, exc, "read")
            new = {"meta": meta}
        meta["t_read_ms"] = _ms(t0)
        out.append(new)
    return _batch(out)


def window_refiner(refine_fn: RefineFn, image: np.ndarray, colours: np.ndarray | None):
    """``refine_fn`` as the per-window refiner of ``pipeline.relabel``: the image (and colour
    map) cut to the window; freed heap memory goes back to the OS before each window
    (``pipeline.memory``), so a worker's memory does not grow with the number of objects."""
    from pipeline.memory import release_memory
    from pipeline.relabel.instances import colour_window

    h, w = image.shape[:2]

    def run(window: tuple[int, int, int, int], coarse: np.ndarray) -> np.ndarray:
        release_memory()
        x0, y0, x1, y1 = window
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        cols = None if colours is None else colour_window(colours, h, w, window)
        return refine_fn(crop, np.ascontiguousarray(coarse), cols)

    return run


def _image_row(meta: dict, static: dict) -> dict[str, Any]:
    rec = {k: static.get(k) for k in _STATIC_ROW_FIELDS}  # the fields every refine row has too
    for k in ("attempt", "key", "image_uri", "mask_uri", "gt_uri", "width", "height", "coarse_width",
              "coarse_height", "status", "error_type", "error_message", "sam_mask_count", "t_read_ms",
              "t_sam_ms", "worker_node"):
        rec[k] = meta.get(k)
    rec["row_kind"] = "image"
    rec["image_key"] = meta["key"]
    image_id = meta.get("image_id")
    rec["image_id"] = image_id if isinstance(image_id, int) else None
    return rec


def _object_row(image_row: dict, kind: str, obj: dict) -> dict[str, Any]:
    shared = ("job_id", "run_id", "attempt", "image_uri", "mask_uri", "gt_uri", "width", "height", "method",
              "model_name", "model_hash", "sam_model", "sam_hash", "decode_mode", "decode_stride", "image_id",
              "worker_node")
    rec = {k: image_row.get(k) for k in shared}
    oid = obj.get("annotation_id") if kind == "coco" else obj.get("category_id")
    rec.update(key=object_key(image_row["key"], kind, oid), image_key=image_row["key"],
               row_kind="instance" if kind == "coco" else "class")
    for k, v in obj.items():
        if k in ("annotation_id", "category_id"):
            v = v if isinstance(v, int) and not isinstance(v, bool) else None
        rec[k] = v
    if rec.get("status") == "skipped":
        rec["error_type"] = None
    return rec


def _coco_image(meta: dict, image: np.ndarray, colours, refine_fn: RefineFn, *, rule, scale,
                output_prefix: str) -> tuple[list[dict], str]:
    from pipeline.io import write_bytes
    from pipeline.relabel.coco import annotation_size
    from pipeline.relabel.instances import image_record_out, relabel_instances

    h, w = image.shape[:2]
    record = meta["record"]
    ann_hw = annotation_size(record, h, w, scale)
    meta["coarse_height"], meta["coarse_width"] = ann_hw
    gt = {aid: (g, tuple(hw)) for aid, g, hw in meta.get("gt") or []}
    out_anns, records = relabel_instances(meta["anns"], set(meta["categories"]), ann_hw, (h, w),
                                          window_refiner(refine_fn, image, colours), rule=rule,
                                          gt=gt if meta.get("gt") is not None else None)
    part = {"image_id": record.get("id"), "image": image_record_out(record, h, w), "annotations": out_anns}
    uri = write_bytes(coco_part_uri(output_prefix, meta["key"]), json.dumps(part).encode())
    return records, uri


def _labelmap_image(meta: dict, image: np.ndarray, labels: np.ndarray, gt: np.ndarray | None, colours,
                    refine_fn: RefineFn, *, rule, ignore) -> tuple[list[dict], bytes]:
    from pipeline.metrics import change_metrics
    from pipeline.refine.trust import TRUST_FIELDS
    from pipeline.relabel.instances import pair_metrics
    from pipeline.relabel.labelmaps import LabelMap, class_coarse, relabel_classes, write_label_map

    h, w = image.shape[:2]
    run = window_refiner(refine_fn, image, colours)
    merged, classes = relabel_classes(labels, ignore, h, w, lambda cls, window, coarse: run(window, coarse),
                                      rule)
    palette = bytes.fromhex(meta["label_palette"]) if meta.get("label_palette") else None
    lm = LabelMap(values=labels, mode=meta["label_mode"], palette=palette,
                  transparency=_decode_transparency(meta.get("label_transparency")))
    png = write_label_map(lm, merged)
    valid = None if gt is None or ignore is None else gt != ignore
    records = []
    for c in classes:
        cls = int(c["class"])
        t0 = time.perf_counter()
        coarse = class_coarse(labels, cls, h, w, (0, 0, w, h))
        refined = merged == cls
        rec: dict[str, Any] = {"category_id": cls, "status": "ok"}
        rec.update({k: c[k] for k in TRUST_FIELDS if k in c})
        ch = change_metrics(coarse, refined)
        rec.update(change_iou=ch["change_iou"], changed_fraction=ch["changed_fraction"])
        if gt is not None:
            truth = gt == cls
            before, after = coarse > 128, refined
            if valid is not None:  # ignore pixels never count: the prediction equals the truth there
                before, after = np.where(valid, before, truth), np.where(valid, after, truth)
            rec.update(pair_metrics(before, after, truth))
        rec["t_metrics_ms"] = _ms(t0)
        records.append(rec)
    return records, png


def relabel_refine_batch(
    batch: dict[str, np.ndarray],
    *,
    refine_fn: RefineFn,
    output_prefix: str,
    static: dict[str, Any],
    rule: Any,
    scale: float | None = None,
    ignore: int | None = 255,
    node: str | None = None,
) -> dict[str, np.ndarray]:
    """Refine every object of each image; write the image's output; return manifest rows
    (JSON in column ``row``): the objects' rows, then the image's row."""
    from pipeline.io import write_bytes
    from pipeline.relabel.coco import AnnotationError

    rows: list[dict] = []
    for row in rows_of(batch):
        meta = row["meta"]
        meta["worker_node"] = node
        kind = meta["kind"]
        objects: list[dict] = []
        t0 = time.perf_counter()
        if meta.get("status") != "error":
            try:
                image = np.require(row["image"], requirements="W")
                colours = row.get("sam_colors")
                if colours is not None:
                    colours = None if colours.size == 0 else np.require(colours, requirements="W")
                if kind == "coco":
                    objects, meta["output_uri"] = _coco_image(meta, image, colours, refine_fn, rule=rule,
                                                              scale=scale, output_prefix=output_prefix)
                else:
                    gt = row["gt"] if row["gt"].size else None
                    objects, png = _labelmap_image(meta, image, row["coarse"], gt, colours, refine_fn,
                                                   rule=rule, ignore=ignore)
                    meta["output_uri"] = write_bytes(label_map_uri(output_prefix, meta["key"]), png)
                meta["status"] = "ok"
            except AnnotationError as exc:  # the image record itself (sizes)
                error_meta(meta, exc.error_type, exc.message)
            except Exception as exc:  # noqa: BLE001
                _fail(meta, exc, "refine")
        meta["t_refine_ms"] = _ms(t0)
        image_row = _image_row(meta, static)
        image_row["output_uri"] = meta.get("output_uri")
        image_row["t_refine_ms"] = meta["t_refine_ms"]
        image_row["instance_count"] = len(meta.get("anns") or []) if kind == "coco" else len(objects)
        failed = sum(o.get("status") == "error" for o in objects)
        if failed and image_row["status"] == "ok":
            image_row["null_reason"] = f"{failed} of {len(objects)} objects failed (see their rows)"
        rows.extend(_object_row(image_row, kind, o) for o in objects)
        times = [image_row.get(k) for k in ("t_read_ms", "t_sam_ms", "t_refine_ms")]
        image_row["t_total_ms"] = round(sum(t for t in times if t is not None), 3)
        rows.append(image_row)
    return {"row": np.asarray([json.dumps(r) for r in rows], dtype=object)}
