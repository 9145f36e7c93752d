"""The review loop over a finished job's output: export tasks, import the reviewers' masks.

    export_review(OUT, DEST, worst=50)      # DEST/tasks.json + DEST/config.xml (Label Studio)
    export_review(OUT, DEST, to="fiftyone", worst=50)   # DEST/samples.json, metadata.json, masks/
    import_review(OUT, "export.json")       # or http(s)://host/api/projects/ID/export?exportType=JSON

Import order: outputs first (:class:`pipeline.review.outputs.JobOutputs`), then one manifest part
``manifest/part-review-<run id>.parquet`` with a ``source = "human"`` row per correction (the
commit marker, as for the pipeline's own rows).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = ["export_review", "import_review", "ExportResult", "ImportResult", "fetch_export", "manifest_rows",
           "TOOLS"]

#: fields a human row copies from the row it corrects (what the object is and where it came from)
_IDENTITY = ("job_id", "key", "row_kind", "image_key", "image_id", "annotation_id", "category_id", "shard",
             "image_uri", "mask_uri", "gt_uri", "width", "height", "coarse_width", "coarse_height", "method",
             "model_name", "model_hash", "sam_model", "sam_hash")


def _absolute(prefix: str) -> str:
    from pipeline.io import is_local

    if is_local(prefix) and not prefix.startswith("file://"):
        return os.path.abspath(prefix)
    return prefix.rstrip("/")


def manifest_rows(prefix: str, keys) -> tuple[dict[str, dict], dict[str, int], set[str]]:
    """For the object ``keys`` only (DuckDB over the parts: a large manifest is never loaded
    whole): (latest ``ok`` row per key that has one, rows so far per key, the manifest's job ids)."""
    import pyarrow as pa

    from pipeline.io.manifest_sql import arrow_of
    from pipeline.query import connect

    from .select import OBJECTS

    con = connect(prefix)
    try:
        jobs = {r[0] for r in con.execute("SELECT DISTINCT job_id FROM manifest").fetchall()}
        if not jobs:
            raise ValueError(f"{prefix}: no manifest (manifest/part-*.parquet): not a samsr job's output")
        con.register("wanted", pa.table({"key": pa.array(sorted(set(keys)), pa.string())}))
        rel = con.sql(f"SELECT * FROM latest WHERE key IN (SELECT key FROM wanted) AND {OBJECTS}")
        rows = {r["key"]: r for r in arrow_of(rel).to_pylist()}
        counts = dict(con.execute("SELECT key, count(*) FROM manifest WHERE key IN (SELECT key FROM wanted) "
                                  "GROUP BY key").fetchall())
    finally:
        con.close()
    return rows, counts, jobs


@dataclass
class ExportResult:
    items_uri: str  # tasks.json (Label Studio) or samples.json (FiftyOne)
    config_uri: str  # config.xml (Label Studio) or metadata.json (FiftyOne)
    chosen: str
    tasks: int
    skipped: list[str] = field(default_factory=list)


def _presigner(seconds: int):
    from pipeline.io import open_fs

    def sign(uri: str) -> str:
        fs, path = open_fs(uri)
        return fs.sign(path, expiration=seconds)

    return sign


#: the tools ``export_review`` writes for
TOOLS = ("label-studio", "fiftyone")


def export_review(prefix: str, dest: str, *, to: str = "label-studio", worst: int | None = None,
                  by: str = "auto", sample: int | None = None, seed: int = 0, where: str | None = None,
                  local_root: str = "/", presign_seconds: int | None = None) -> ExportResult:
    """Write the chosen objects of the job under ``prefix`` for review in ``to``:

    - ``label-studio``: ``dest/tasks.json`` (tasks: image URL, coarse and refined masks as
      predictions, manifest keys) and ``dest/config.xml`` (the labeling config);
    - ``fiftyone``: a FiftyOne dataset directory (:mod:`pipeline.review.fo_dataset`:
      ``samples.json``, ``metadata.json``, ``masks/``); local ``dest`` and local images only.

    An object that cannot be written (an image the tool cannot open, an unreadable mask) is left
    out and named in ``skipped``."""
    from pipeline.io import is_local

    from .outputs import JobOutputs
    from .select import select_keys

    if to not in TOOLS:
        raise ValueError(f"--to: {to!r} is not one of {', '.join(TOOLS)}")
    if to == "fiftyone" and not is_local(dest):
        raise ValueError(f"--dest {dest!r}: FiftyOne reads a local dataset directory")
    prefix = _absolute(prefix)
    keys, chosen = select_keys(prefix, worst=worst, by=by, sample=sample, seed=seed, where=where)
    rows, _, _ = manifest_rows(prefix, keys)
    outputs = JobOutputs(prefix)
    if to == "fiftyone":
        build = _fiftyone_builder(outputs, os.path.abspath(dest.removeprefix("file://")))
    else:
        build = _label_studio_builder(outputs, local_root,
                                      _presigner(presign_seconds) if presign_seconds else None)
    items, skipped = [], []
    for key in keys:
        row = rows.get(key)
        try:
            if row is None:
                raise ValueError("no ok row")
            items.append(build(row))
        except Exception as e:  # noqa: BLE001 - one object's problem: named, the others go on
            skipped.append(f"{key}: {type(e).__name__}: {e}")
    return _write_export(to, dest, items, chosen, skipped)


def _label_studio_builder(outputs, local_root: str, presign):
    from .tasks import build_task, image_url

    def build(row: dict) -> dict:
        url = image_url(row["image_uri"], local_root=local_root, presign=presign)
        coarse, refined = outputs.masks(row)
        return build_task(row, url, coarse, refined)

    return build


def _fiftyone_builder(outputs, dest: str):
    """Row -> FiftyOne sample dict; writes the sample's masks (0 / 255 PNG) under ``dest/masks/``."""
    import numpy as np

    from pipeline.io import (
        decode_mask,
        encode_png,
        is_local,
        join_uri,
        read_bytes,
        resize_mask,
        safe_key,
        write_bytes,
    )

    from .fo_dataset import build_sample

    def build(row: dict) -> dict:
        uri = row["image_uri"]
        if not is_local(uri) or ("#" in uri and ".tar" in uri.split("#", 1)[0]):
            raise ValueError(f"image {uri!r}: FiftyOne opens local image files only")
        path = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
        h, w = int(row["height"]), int(row["width"])
        coarse, refined = outputs.masks(row)
        masks = {"coarse": coarse, "refined": refined}
        if row.get("gt_uri"):
            gt = decode_mask(read_bytes(row["gt_uri"]), key=row["key"], what="gt")
            masks["ground_truth"] = resize_mask(gt, h, w) > 128
        paths = {}
        for name, mask in masks.items():
            paths[name] = join_uri(dest, "masks", f"{safe_key(row['key'])}.{name}.png")
            write_bytes(paths[name], encode_png(mask.astype(np.uint8) * 255))
        return build_sample(row, path, paths)

    return build


def _write_export(to: str, dest: str, items: list, chosen: str, skipped: list[str]) -> ExportResult:
    from pipeline.io import join_uri, write_bytes

    from .fo_dataset import METADATA
    from .tasks import labeling_config

    if to == "fiftyone":
        samples_uri = write_bytes(join_uri(dest, "samples.json"), json.dumps({"samples": items}).encode())
        meta_uri = write_bytes(join_uri(dest, "metadata.json"), json.dumps(METADATA).encode())
        return ExportResult(samples_uri, meta_uri, chosen, len(items), skipped)
    tasks_uri = write_bytes(join_uri(dest, "tasks.json"), json.dumps(items).encode())
    config_uri = write_bytes(join_uri(dest, "config.xml"), labeling_config().encode())
    return ExportResult(tasks_uri, config_uri, chosen, len(items), skipped)


@dataclass
class ImportResult:
    run_id: str
    corrected: list[str]
    errors: list[str]
    unreviewed: int
    written: list[str]
    manifest_part: str | None


def _access_header(base: str, api_key: str) -> str:
    """Authorization header for Label Studio: a personal access token (a JWT refresh token) is
    exchanged at ``/api/token/refresh/`` for an access token; a legacy token is sent as is."""
    if api_key.count(".") == 2:
        req = urllib.request.Request(urllib.parse.urljoin(base, "/api/token/refresh/"),
                                     data=json.dumps({"refresh": api_key}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return "Bearer " + json.loads(resp.read())["access"]
    return "Token " + api_key


def fetch_export(source: str, api_key: str | None = None) -> Any:
    """The JSON export at ``source``: a file / storage URI, or an http(s) URL of Label Studio's
    export API (``/api/projects/ID/export?exportType=JSON``) read with ``api_key``."""
    from pipeline.io import read_bytes

    if source.startswith(("http://", "https://")):
        if not api_key:
            raise ValueError(f"{source}: reading from Label Studio needs an API key (LABEL_STUDIO_API_KEY)")
        auth = {"Authorization": _access_header(source, api_key)}
        with urllib.request.urlopen(urllib.request.Request(source, headers=auth), timeout=300) as resp:
            tasks = json.loads(resp.read())
        return _with_user_emails(tasks, source, auth)
    else:
        try:
            data = read_bytes(source)
        except FileNotFoundError:
            raise ValueError(f"{source}: file not found") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from None


def _with_user_emails(tasks: Any, source: str, auth: dict) -> Any:
    """The export names reviewers by user id: put their emails in (``/api/users/``)."""
    if not isinstance(tasks, list):
        return tasks
    req = urllib.request.Request(urllib.parse.urljoin(source, "/api/users/"), headers=auth)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            users = json.loads(resp.read())
    except (OSError, ValueError):  # a token that may not list users: reviewers stay user ids
        return tasks
    users = users.get("results", []) if isinstance(users, dict) else users
    emails = {u.get("id"): u.get("email") for u in users if isinstance(u, dict)}
    for task in tasks:
        for ann in (task.get("annotations") or []) if isinstance(task, dict) else []:
            who = ann.get("completed_by") if isinstance(ann, dict) else None
            if isinstance(who, int) and emails.get(who):
                ann["completed_by"] = {"id": who, "email": emails[who]}
    return tasks


def import_review(prefix: str, source: str, *, api_key: str | None = None,
                  reviewer: str | None = None) -> ImportResult:
    """Apply the reviewers' masks of the Label Studio export ``source`` to the job under
    ``prefix``: outputs replaced, then one manifest part of ``source = "human"`` rows. Task
    errors (:mod:`pipeline.review.importer`) are returned; the other tasks are applied."""
    from pipeline.io import write_manifest_part

    from .importer import read_export, task_keys
    from .outputs import JobOutputs

    prefix = _absolute(prefix)
    tasks = fetch_export(source, api_key)
    rows, counts, job_ids = manifest_rows(prefix, task_keys(tasks))
    corrections, task_errors, unreviewed = read_export(tasks, rows, job_ids)
    errors = [str(e) for e in task_errors]
    outputs = JobOutputs(prefix)
    now = dt.datetime.now(dt.timezone.utc)
    run_id = f"review-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    staged: list[tuple[Any, dict]] = []
    for c in corrections:
        row = rows[c.key]
        try:
            uri = outputs.replace(row, c.mask)
        except Exception as e:  # noqa: BLE001 - this object's output: named, the others go on
            errors.append(f"task {c.task_id} (key {c.key!r}): bad_output: {type(e).__name__}: {e}")
            continue
        human = {k: row.get(k) for k in _IDENTITY}
        human.update(run_id=run_id, attempt=counts[c.key] + 1, status="ok", output_uri=uri, source="human",
                     reviewer=reviewer or c.reviewer, reviewed_at=c.reviewed_at or now, finished_at=now)
        if row.get("soft_output_uri") and outputs.kind == "refine":
            human["soft_output_uri"] = row["soft_output_uri"]
        staged.append((c, human))
    written = outputs.commit()
    part = write_manifest_part([h for _, h in staged], prefix, run_id) if staged else None
    return ImportResult(run_id, [c.key for c, _ in staged], errors, unreviewed, written, part)
