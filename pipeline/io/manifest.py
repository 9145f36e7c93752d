"""The Parquet manifest (DESIGN §4): one row per sample and attempt.

Files: ``<output_prefix>/manifest/part-<name>.parquet``. Parts are written after the masks of
their rows (commit marker last), so a row with ``status == "ok"`` means its mask exists.
A rerun skips keys in :func:`completed_keys`; a key can have several rows across attempts
(e.g. ``error`` then ``ok``), so queries that count samples should use the latest row per key
(:func:`latest_rows`). A ``source = "human"`` row (a reviewer's correction) is the latest row of
its key whatever the pipeline wrote after it, and as an ``ok`` row a rerun skips its key.

Columns (type; null when not applicable):

====================  ===========  =====================================================
column                type         meaning
====================  ===========  =====================================================
job_id                string       job name/id (required)
run_id                string       id of this run of the job (a rerun gets a new one)
attempt               int32        attempt number of this sample across runs of the job (1-based)
key                   string       sample key as listed (required); samsr relabel: the image key, and
                                   ``<image key>#ann<id>`` / ``<image key>#class<id>`` for its objects
row_kind              string       null (samsr refine) | ``image`` | ``instance`` (COCO) | ``class`` (label
                                   map): samsr relabel writes one row per object plus one per image
image_key             string       relabel: the key of the object's image
image_id              int64        relabel COCO: the image record's id
annotation_id         int64        relabel COCO: the annotation's id
category_id           int64        relabel: the annotation's category / the label map's class id
instance_count        int32        relabel image rows: objects (annotations / classes) in the image
shard                 string       tar shard, list file or folder the sample came from
image_uri             string       input image (``<shard>#<member>`` for tar members)
mask_uri              string       input coarse mask
gt_uri                string       ground truth, if any
output_uri            string       refined binary mask PNG (``<prefix>/masks/<safe_key>.png``)
soft_output_uri       string       soft mask PNG, if written
width, height         int32        image size after EXIF orientation (pixels)
coarse_width/height   int32        coarse mask size as stored (before upsampling)
method                string       ``crm`` | ``samsr-v1`` | ``samsr-v2.1``
model_name            string       refiner registry name (e.g. ``crm_r50``)
model_hash            string       refiner checkpoint sha256, first 16 hex digits
sam_model             string       SAM type (``vit_h``...) or null
sam_hash              string       SAM checkpoint hash or null
decode_mode           string       ``full`` | ``strided`` | ``bbox`` | ``contour``
decode_stride         int32        stride for ``strided``
status                string       ``ok`` | ``error`` | ``skipped`` (required)
error_type            string       SampleError type (``decode_error``, ``missing_mask``...)
error_message         string       human-readable reason naming the input
iou_coarse/refined    float64      per-image IoU vs gt (null without gt)
mba_coarse/refined    float64      per-image mBA (null without gt or empty band)
biou_coarse/refined   float64      per-image boundary IoU
intersection_coarse   int64        pixel counts for dataset IoU (sum I / sum U)
union_coarse          int64
intersection_refined  int64
union_refined         int64
null_reason           string       why a metric is null (e.g. ``empty_band``)
change_iou            float64      IoU(coarse, refined), for runs without gt
changed_fraction      float64      fraction of pixels whose binary label changed
sam_mask_count        int32        SAM proposals used
sam_gate              string       SAM-SR-v1 gate that fired, or null
source                string       null (the pipeline) | ``human``: a reviewer's mask (samsr review import)
reviewer              string       human rows: who corrected the mask (the annotation tool's user)
reviewed_at           timestamp    human rows: when the reviewer saved it (UTC)
t_read_ms             float64      stage timings in milliseconds
t_sam_ms              float64
t_refine_ms           float64
t_metrics_ms          float64
t_write_ms            float64
t_total_ms            float64
worker_node           string       Ray node id / host name
finished_at           timestamp    UTC, ms precision (filled with now() when absent)
====================  ===========  =====================================================
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .fs import join_uri, open_fs, to_uri, write_bytes

__all__ = [
    "MANIFEST_SCHEMA",
    "REQUIRED_COLUMNS",
    "STATUSES",
    "write_manifest_part",
    "read_manifest",
    "completed_keys",
    "resume_state",
    "latest_rows",
    "manifest_dir",
    "rows_to_table",
    "input_fields",
]

_S, _I32, _I64, _F = pa.string(), pa.int32(), pa.int64(), pa.float64()

MANIFEST_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("job_id", _S, nullable=False),
        ("run_id", _S),
        ("attempt", _I32),
        pa.field("key", _S, nullable=False),
        ("row_kind", _S),
        ("image_key", _S),
        ("image_id", _I64),
        ("annotation_id", _I64),
        ("category_id", _I64),
        ("instance_count", _I32),
        ("shard", _S),
        ("image_uri", _S),
        ("mask_uri", _S),
        ("gt_uri", _S),
        ("output_uri", _S),
        ("soft_output_uri", _S),
        ("width", _I32),
        ("height", _I32),
        ("coarse_width", _I32),
        ("coarse_height", _I32),
        ("method", _S),
        ("model_name", _S),
        ("model_hash", _S),
        ("sam_model", _S),
        ("sam_hash", _S),
        ("decode_mode", _S),
        ("decode_stride", _I32),
        pa.field("status", _S, nullable=False),
        ("error_type", _S),
        ("error_message", _S),
        ("iou_coarse", _F),
        ("iou_refined", _F),
        ("mba_coarse", _F),
        ("mba_refined", _F),
        ("biou_coarse", _F),
        ("biou_refined", _F),
        ("intersection_coarse", _I64),
        ("union_coarse", _I64),
        ("intersection_refined", _I64),
        ("union_refined", _I64),
        ("null_reason", _S),
        ("change_iou", _F),
        ("changed_fraction", _F),
        ("sam_mask_count", _I32),
        ("sam_gate", _S),
        ("trust_score", _F),
        ("accepted", pa.bool_()),
        ("accepted_share", _F),
        ("line_level", _F),
        ("candidate_uri", _S),
        ("source", _S),
        ("reviewer", _S),
        ("reviewed_at", pa.timestamp("ms", tz="UTC")),
        ("t_read_ms", _F),
        ("t_sam_ms", _F),
        ("t_refine_ms", _F),
        ("t_metrics_ms", _F),
        ("t_write_ms", _F),
        ("t_total_ms", _F),
        ("worker_node", _S),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)

REQUIRED_COLUMNS = ("job_id", "key", "status")
STATUSES = ("ok", "error", "skipped")
_PART_NAME = re.compile(r"[A-Za-z0-9._-]+")
_FIELDS = {f.name: f for f in MANIFEST_SCHEMA}


def manifest_dir(output_prefix: str) -> str:
    """``<output_prefix>/manifest``."""
    return join_uri(output_prefix, "manifest")


def _clean_row(i: int, row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    unknown = sorted(set(row) - set(_FIELDS))
    where = f"manifest row {i} (key {row.get('key')!r})"
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: MANIFEST_SCHEMA names")
    for name in REQUIRED_COLUMNS:
        if row.get(name) is None:
            raise ValueError(f"{where}: required field {name!r} is missing or null")
    if row["status"] not in STATUSES:
        raise ValueError(f"{where}: status must be one of {STATUSES}, got {row['status']!r}")
    if row["status"] == "error" and not row.get("error_type"):
        raise ValueError(f"{where}: status 'error' needs an error_type")
    out: dict[str, Any] = {}
    for name, field in _FIELDS.items():
        v = row.get(name)
        if v is not None and hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()  # numpy scalar -> Python
        if isinstance(v, float) and math.isnan(v):
            v = None
        if v is not None and pa.types.is_integer(field.type) and isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"{where}: field {name!r} must be an integer, got {v!r}")
            v = int(v)
        out[name] = v
    if out["finished_at"] is None:
        out["finished_at"] = now
    return out


def input_fields(ref: Any, sample: Any = None) -> dict[str, Any]:
    """Manifest fields that describe the input: from a SampleRef and, if decoded, its Sample.

    Returns key, shard, image_uri, mask_uri, gt_uri and (with ``sample``) width, height,
    coarse_width, coarse_height -- the same for ok and error rows of one sample.
    """
    out = {name: getattr(ref, name) for name in ("key", "shard", "image_uri", "mask_uri", "gt_uri")}
    if sample is not None:
        out.update(
            width=sample.width,
            height=sample.height,
            coarse_width=sample.coarse_size[1],
            coarse_height=sample.coarse_size[0],
        )
    return out


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Validate rows against MANIFEST_SCHEMA and build a table (missing optional fields null).

    Raises ValueError naming the row and field for unknown fields, missing required fields,
    a bad status, or a value of the wrong type.
    """
    now = dt.datetime.now(dt.timezone.utc)
    clean = [_clean_row(i, dict(r), now) for i, r in enumerate(rows)]
    try:
        return pa.Table.from_pylist(clean, schema=MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
        for i, row in enumerate(clean):  # find the culprit for a useful message
            for name, value in row.items():
                try:
                    pa.array([value], type=_FIELDS[name].type)
                except Exception:
                    raise ValueError(
                        f"manifest row {i} (key {row['key']!r}): field {name!r} has bad value {value!r} "
                        f"for type {_FIELDS[name].type}"
                    ) from exc
        raise ValueError(f"manifest rows do not match MANIFEST_SCHEMA: {exc}") from exc


def write_manifest_part(rows: list[dict[str, Any]], output_prefix: str, part_name: str) -> str:
    """Validate ``rows`` and write ``<prefix>/manifest/part-<part_name>.parquet``; returns its URI.

    part_name: ``[A-Za-z0-9._-]+``; use a deterministic name (e.g. from the batch's keys and
    the run id) so a retried task overwrites its own part instead of adding a duplicate.
    Written atomically (local rename or a single PUT).
    """
    if not isinstance(part_name, str) or not _PART_NAME.fullmatch(part_name) or part_name.startswith("."):
        raise ValueError(f"write_manifest_part: bad part_name {part_name!r} (use [A-Za-z0-9._-])")
    table = rows_to_table(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return write_bytes(join_uri(manifest_dir(output_prefix), f"part-{part_name}.parquet"), buf.getvalue())


def _part_uris(output_prefix: str) -> list[str]:
    uri = manifest_dir(output_prefix)
    fs, path = open_fs(uri)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    if not fs.isdir(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-")]
    return sorted(to_uri(fs, p, uri) for p in names if p.endswith(".parquet"))


def _conform(table: pa.Table) -> pa.Table:
    cols = []
    for field in MANIFEST_SCHEMA:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=MANIFEST_SCHEMA)


def read_manifest(output_prefix: str, columns: list[str] | None = None) -> pa.Table:
    """All manifest parts under ``output_prefix`` as one table with MANIFEST_SCHEMA.

    Parts are read in name order; columns missing from older parts are null. No parts -> an
    empty table with the schema. ``columns`` selects a subset (in schema order).
    """
    tables = []
    for uri in _part_uris(output_prefix):
        fs, path = open_fs(uri)
        with fs.open(path, "rb") as f:
            tables.append(_conform(pq.read_table(f)))
    table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    if columns is not None:
        unknown = sorted(set(columns) - set(_FIELDS))
        if unknown:
            raise ValueError(f"read_manifest: unknown column(s) {unknown}")
        table = table.select([f.name for f in MANIFEST_SCHEMA if f.name in columns])
    return table


def resume_state(output_prefix: str) -> tuple[set[str], Counter]:
    """The resume rule, in one place: (keys with at least one ``ok`` row, which a rerun skips;
    rows so far per key, so the next attempt of a key is numbered ``count + 1``)."""
    rows = read_manifest(output_prefix, columns=["key", "status"]).to_pylist()
    return {r["key"] for r in rows if r["status"] == "ok"}, Counter(r["key"] for r in rows)


def completed_keys(output_prefix: str) -> set[str]:
    """Keys that have at least one ``ok`` row in the manifest (skip these on resume)."""
    return resume_state(output_prefix)[0]


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per key: its newest ``ok`` row if any (a reviewer's, ``source = 'human'``, before the
    pipeline's), else its newest row (by finished_at; a later attempt wins a tie), in key order.
    The rule is ``pipeline.io.manifest_sql.LATEST_SQL``, the same SQL that ``samsr query`` uses for
    its ``latest`` view."""
    if table.num_rows == 0:
        return table
    from .manifest_sql import latest_of_table

    return latest_of_table(table)
