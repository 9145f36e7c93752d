"""The per-sample work of the refine pipeline, as batch functions over dicts of numpy arrays.

``pipeline.runner.refine`` runs these as Ray Data UDFs; they know nothing of Ray themselves, so
they can be called (and tested) directly. A batch is a dict of equal-length columns:

  ``meta``         str: JSON of the sample's scalar fields (key, ref, status, timings, ...)
  ``image``        (H, W, 3) uint8 RGB                         (decode -> refine)
  ``coarse``       (H, W) uint8, the coarse mask at image size  (decode -> finish)
  ``gt``           (H, W) uint8 ground truth, or (0, 0) when absent
  ``sam_colors``   (h, w, 3) uint8 SAM colour map at SAM's working size, or (0, 0, 3)
  ``refine_input`` (H, W) uint8 mask given to the refiner instead of ``coarse`` (SAM-SR-v1
                   merge), or (0, 0) to use ``coarse``
  ``refined``      (H, W) uint8 binary refined mask in {0, 255}
  ``soft``         (H, W) uint8 soft mask round(p * 255), or (0, 0) when not written

A sample that fails at any stage keeps flowing with ``status = "error"`` in its meta and
zero-size arrays; the last stage turns every sample into one manifest row (JSON in ``row``).
Columns of a batch may hold arrays of different shapes (object arrays) or one stacked array.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "ARRAY_COLUMNS",
    "empty_array",
    "column",
    "rows_of",
    "make_batch",
    "error_meta",
    "decode_batch",
    "sam_batch",
    "refine_batch",
    "finish_batch",
]

ARRAY_COLUMNS = {
    "image": (0, 0, 3),
    "coarse": (0, 0),
    "gt": (0, 0),
    "sam_colors": (0, 0, 3),
    "refine_input": (0, 0),
    "refined": (0, 0),
    "soft": (0, 0),
    "candidate": (0, 0),
}


def empty_array(name: str) -> np.ndarray:
    """The zero-size placeholder for array column ``name`` (uint8)."""
    return np.zeros(ARRAY_COLUMNS[name], dtype=np.uint8)


def column(values: list[Any]) -> np.ndarray:
    """A batch column from per-row values: stacked when all arrays share a shape, else an object array."""
    if values and all(isinstance(v, np.ndarray) for v in values):
        if all(v.shape == values[0].shape and v.dtype == values[0].dtype for v in values):
            return np.stack(values)
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Split a batch into per-row dicts; ``meta`` is parsed from JSON."""
    n = len(batch["meta"])
    rows = []
    for i in range(n):
        row = {k: (np.asarray(v[i]) if k in ARRAY_COLUMNS else v[i]) for k, v in batch.items()}
        row["meta"] = json.loads(str(row["meta"]))
        rows.append(row)
    return rows


def make_batch(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Build a batch with ``meta`` (JSON) plus ``columns`` from per-row dicts (missing -> empty)."""
    out = {"meta": np.asarray([json.dumps(r["meta"]) for r in rows], dtype=object)}
    for name in columns:
        values = [r.get(name) for r in rows]
        out[name] = column([empty_array(name) if v is None else v for v in values])
    return out


def error_meta(meta: dict[str, Any], error_type: str, message: str) -> dict[str, Any]:
    """Mark ``meta`` as failed (first error wins)."""
    if meta.get("status") != "error":
        meta.update(status="error", error_type=error_type, error_message=message[:2000])
    return meta


def _fail(meta: dict[str, Any], exc: BaseException, stage: str) -> None:
    from pipeline.io import SampleError

    if isinstance(exc, SampleError):
        error_meta(meta, exc.error_type, exc.message)
    else:
        error_meta(meta, f"{stage}_error", f"{type(exc).__name__}: {exc}")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def decode_batch(
    batch: dict[str, np.ndarray], *, max_pixels: int, load_gt: bool = True
) -> dict[str, np.ndarray]:
    """Refs -> decoded samples. Input columns: ``meta`` with ``ref`` (SampleRef.to_dict()).

    Adds to meta: width, height, coarse_width, coarse_height, has_gt, t_read_ms; a SampleError
    (or any decoding failure) makes the sample an error row.
    """
    from pipeline.io import SampleRef, input_fields, load_sample

    out = []
    for row in rows_of(batch):
        meta = row["meta"]
        t0 = time.perf_counter()
        ref = SampleRef.from_dict(meta["ref"])
        new = {"meta": meta}
        try:
            meta.update(input_fields(ref))
            sample = load_sample(ref, max_pixels=max_pixels, load_gt=load_gt)
            meta.update(input_fields(ref, sample))
            meta["has_gt"] = sample.gt is not None
            new.update(image=sample.image, coarse=sample.coarse, gt=sample.gt)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            _fail(meta, exc, "read")
        meta["t_read_ms"] = _ms(t0)
        out.append(new)
    return make_batch(out, ("image", "coarse", "gt"))


def sam_batch(
    batch: dict[str, np.ndarray],
    *,
    generator: Any,
    method: str,
    working_size: int,
    seed: int,
    v1_kwargs: dict[str, float],
) -> dict[str, np.ndarray]:
    """Run SAM's automatic mask generator on each ok sample.

    samsr-v2.1: adds ``sam_colors`` (the colour map at working size); samsr-v1: adds
    ``refine_input`` (the merged mask, when no gate fired) and meta ``sam_gate``.
    Meta gets ``sam_mask_count`` and ``t_sam_ms``.
    """
    from pipeline.sam import merge_v1, propose

    out = []
    for row in rows_of(batch):
        meta = row["meta"]
        new = {k: row[k] for k in ("meta", "image", "coarse", "gt")}
        if meta.get("status") == "error":
            out.append(new)
            continue
        t0 = time.perf_counter()
        try:
            props = propose(generator, row["image"], meta["key"], working_size=working_size, seed=seed)
            meta["sam_mask_count"] = int(len(props.masks))
            if method == "samsr-v2.1":
                new["sam_colors"] = np.ascontiguousarray(props.colour_map, dtype=np.uint8)
            else:
                merged, gate = merge_v1(row["coarse"], props.masks, **v1_kwargs)
                meta["sam_gate"] = gate
                if gate is None:
                    new["refine_input"] = np.ascontiguousarray(merged, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            _fail(meta, exc, "sam")
        meta["t_sam_ms"] = _ms(t0)
        out.append(new)
    return make_batch(out, ("image", "coarse", "gt", "sam_colors", "refine_input"))


def refine_batch(
    batch: dict[str, np.ndarray],
    *,
    refine_fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray],
    soft: bool,
    node: str | None = None,
) -> dict[str, np.ndarray]:
    """Refine each ok sample; drops the image.

    refine_fn(image (H, W, 3) uint8, mask (H, W) uint8, sam_colors or None) -> (H, W) float32
    probabilities in [0, 1], or a :class:`pipeline.refine.trust.Outcome`. Adds ``refined``
    (binary {0, 255}), ``soft`` (if asked), ``candidate`` (the binary refined mask the trust
    policy turned down, else empty), meta ``t_refine_ms``, ``worker_node`` and the outcome's
    trust fields.
    """
    from pipeline.io import to_binary_u8, to_soft_u8
    from pipeline.refine.trust import split_outcome

    out = []
    for row in rows_of(batch):
        meta = row["meta"]
        new = {k: row[k] for k in ("meta", "coarse", "gt")}
        meta["worker_node"] = node
        if meta.get("status") == "error":
            out.append(new)
            continue
        t0 = time.perf_counter()
        try:
            mask = row.get("refine_input")
            mask = row["coarse"] if mask is None or mask.size == 0 else mask
            colors = row.get("sam_colors")
            colors = None if colors is None or colors.size == 0 else colors
            # Arrow-backed batch arrays are read-only; torch wants writable memory
            image, mask = np.require(row["image"], requirements="W"), np.require(mask, requirements="W")
            colors = None if colors is None else np.require(colors, requirements="W")
            prob, info, candidate = split_outcome(refine_fn(image, mask, colors))
            meta.update(info)
            new["refined"] = to_binary_u8(prob)
            if candidate is not None:
                new["candidate"] = to_binary_u8(candidate)
            if soft:
                new["soft"] = to_soft_u8(prob)
        except Exception as exc:  # noqa: BLE001
            _fail(meta, exc, "refine")
        meta["t_refine_ms"] = _ms(t0)
        out.append(new)
    return make_batch(out, ("coarse", "gt", "refined", "soft", "candidate"))


_STATIC_ROW_FIELDS = (
    "job_id",
    "run_id",
    "method",
    "model_name",
    "model_hash",
    "sam_model",
    "sam_hash",
    "decode_mode",
    "decode_stride",
)
_META_ROW_FIELDS = (
    "attempt",
    "key",
    "shard",
    "image_uri",
    "mask_uri",
    "gt_uri",
    "width",
    "height",
    "coarse_width",
    "coarse_height",
    "status",
    "error_type",
    "error_message",
    "sam_mask_count",
    "sam_gate",
    "trust_score",
    "accepted",
    "accepted_share",
    "line_level",
    "t_read_ms",
    "t_sam_ms",
    "t_refine_ms",
    "worker_node",
)


def finish_batch(
    batch: dict[str, np.ndarray], *, output_prefix: str, static: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Metrics and mask writes; returns one manifest row per sample as JSON in column ``row``.

    static: manifest fields equal for every row (job_id, run_id, method, model hash, ...).
    The mask (and soft mask) are written before the row exists, so a manifest row with
    status ok always has its mask.
    """
    from pipeline.io import encode_png, mask_uri, write_bytes, write_masks
    from pipeline.metrics import change_metrics, image_metrics

    rows = []
    for row in rows_of(batch):
        meta = row["meta"]
        rec: dict[str, Any] = {k: static.get(k) for k in _STATIC_ROW_FIELDS}
        rec.update({k: meta.get(k) for k in _META_ROW_FIELDS})
        if meta.get("status") != "error":
            t0 = time.perf_counter()
            try:
                refined, coarse, gt = row["refined"], row["coarse"], row["gt"]
                reasons = []
                if gt.size:
                    for tag, pred in (("coarse", coarse), ("refined", refined)):
                        m = image_metrics(pred, gt)
                        rec.update(
                            {
                                f"iou_{tag}": m["iou"],
                                f"mba_{tag}": m["mba"],
                                f"biou_{tag}": m["biou"],
                                f"intersection_{tag}": m["intersection"],
                                f"union_{tag}": m["union"],
                            }
                        )
                        if m.get("null_reason"):
                            reasons.append(f"{tag}:{m['null_reason']}")
                ch = change_metrics(coarse, refined)
                rec.update(change_iou=ch["change_iou"], changed_fraction=ch["changed_fraction"])
                if ch.get("null_reason"):
                    reasons.append(ch["null_reason"])
                rec["null_reason"] = "; ".join(reasons) or None
                rec["t_metrics_ms"] = _ms(t0)
                t0 = time.perf_counter()
                rec["output_uri"], rec["soft_output_uri"] = write_masks(
                    output_prefix, meta["key"], refined, row["soft"] if row["soft"].size else None
                )
                candidate = row.get("candidate")
                if candidate is not None and candidate.size:
                    rec["candidate_uri"] = write_bytes(mask_uri(output_prefix, meta["key"], "candidates"),
                                                       encode_png(candidate))
                rec["t_write_ms"] = _ms(t0)
                rec["status"] = "ok"
            except Exception as exc:  # noqa: BLE001
                _fail(meta, exc, "write")
                rec.update(status="error", error_type=meta["error_type"], error_message=meta["error_message"])
        times = [rec.get(k) for k in ("t_read_ms", "t_sam_ms", "t_refine_ms", "t_metrics_ms", "t_write_ms")]
        rec["t_total_ms"] = round(sum(t for t in times if t is not None), 3)
        rows.append(rec)
    return {"row": np.asarray([json.dumps(r) for r in rows], dtype=object)}
