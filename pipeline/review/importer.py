"""A Label Studio JSON export -> the reviewers' masks, checked against the manifest. Pure.

Per task (a list entry of Label Studio's ``JSON`` export): the annotation used is the newest
(``updated_at``, else ``created_at``) that is not cancelled; its ``brushlabels`` results are
united into one mask. A task without annotations was not reviewed and is left alone. Every other
problem is a :class:`TaskError` naming the task id and its key, and the other tasks go on:

- ``other_project``: the task has no ``samsr_key`` / ``samsr_job`` (not exported by samsr
  review) or another job's id;
- ``unknown_key``: its key has no ``ok`` row in the manifest;
- ``wrong_size``: the image size in the result or in the RLE differs from the manifest's;
- ``empty_mask``: the annotation has no brush result or its mask is empty;
- ``bad_result``: an undecodable RLE, a result of another type or format;
- ``superseded``: another task of the same key has a newer annotation (that one is used).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from .brush_rle import BrushRleError, BrushSizeError, decode_mask
from .tasks import FROM_NAME, TaskDataKeys

__all__ = ["Correction", "TaskError", "read_export", "task_keys", "reviewer_of", "ERROR_TYPES"]

ERROR_TYPES = ("other_project", "unknown_key", "wrong_size", "empty_mask", "bad_result", "superseded")


@dataclass
class Correction:
    """A reviewer's mask for the manifest row ``key``."""

    task_id: Any
    key: str
    mask: np.ndarray  # (H, W) bool
    reviewer: str | None
    reviewed_at: dt.datetime | None


class TaskError(ValueError):
    def __init__(self, task_id: Any, key: Any, error_type: str, message: str) -> None:
        self.task_id, self.key, self.error_type = task_id, key, error_type
        super().__init__(f"task {task_id} (key {key!r}): {error_type}: {message}")


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def reviewer_of(annotation: dict) -> str | None:
    """Who made the annotation: ``completed_by`` as Label Studio exports it (an object with an
    email, or a user id)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        named = who.get("email") or who.get("username")
        return named or (f"label-studio user {who['id']}" if "id" in who else None)
    if who is None:
        return None
    return f"label-studio user {who}"


def _newest(annotations: list) -> dict | None:
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None
    return max(usable, key=lambda a: (_time(a.get("updated_at")) or _time(a.get("created_at"))
                                      or dt.datetime.min.replace(tzinfo=dt.timezone.utc), a.get("id") or 0))


def _task_mask(task_id: Any, key: str, annotation: dict, h: int, w: int) -> np.ndarray:
    results = [r for r in annotation.get("result") or []
               if isinstance(r, dict) and r.get("from_name") == FROM_NAME]
    if not results:
        raise TaskError(task_id, key, "empty_mask", f"annotation {annotation.get('id')} has no brush result")
    mask = np.zeros((h, w), bool)
    for r in results:
        value = r.get("value") or {}
        if r.get("type") != "brushlabels" or value.get("format") != "rle":
            raise TaskError(task_id, key, "bad_result",
                            f"result {r.get('id')}: type {r.get('type')!r} format {value.get('format')!r} "
                            "(expected brushlabels rle)")
        size = (r.get("original_height"), r.get("original_width"))
        if size != (None, None) and size != (h, w):
            raise TaskError(task_id, key, "wrong_size",
                            f"result {r.get('id')} is for a {size[1]}x{size[0]} image, "
                            f"the manifest says {w}x{h}")
        try:
            mask |= decode_mask(value.get("rle") or [], h, w)
        except BrushRleError as e:
            kind = "wrong_size" if isinstance(e, BrushSizeError) else "bad_result"
            raise TaskError(task_id, key, kind, f"result {r.get('id')}: {e}") from None
    if not mask.any():
        raise TaskError(task_id, key, "empty_mask", f"annotation {annotation.get('id')}: the mask is empty")
    return mask


def task_keys(tasks: Any) -> list[str]:
    """The manifest keys the tasks of an export name (``data.samsr_key``)."""
    if not isinstance(tasks, list):
        return []
    datas = [t.get("data") for t in tasks if isinstance(t, dict)]
    return [d[TaskDataKeys.KEY] for d in datas
            if isinstance(d, dict) and isinstance(d.get(TaskDataKeys.KEY), str)]


def read_export(tasks: Any, rows: dict[str, dict],
                job_ids: set[str]) -> tuple[list[Correction], list[TaskError], int]:
    """Label Studio's JSON export (a list of tasks) -> (corrections, task errors, tasks not
    reviewed). ``rows``: the manifest's latest ``ok`` row per key; ``job_ids``: the job ids of
    the manifest (a task of another job is ``other_project``)."""
    if not isinstance(tasks, list):
        raise ValueError("Label Studio export: expected a JSON list of tasks (export type JSON)")
    k = TaskDataKeys
    out: list[Correction] = []
    errors: list[TaskError] = []
    unreviewed = 0
    for i, task in enumerate(tasks):
        task_id = task.get("id", f"#{i}") if isinstance(task, dict) else f"#{i}"
        data = task.get("data") if isinstance(task, dict) else None
        key = data.get(k.KEY) if isinstance(data, dict) else None
        try:
            if not isinstance(data, dict) or not isinstance(key, str) or not data.get(k.JOB):
                raise TaskError(task_id, key, "other_project",
                                f"no {k.KEY} / {k.JOB} in its data: not a task exported by samsr review")
            if data[k.JOB] not in job_ids:
                raise TaskError(task_id, key, "other_project",
                                f"task of job {data[k.JOB]!r}; this output holds {sorted(job_ids)}")
            row = rows.get(key)
            if row is None:
                raise TaskError(task_id, key, "unknown_key", "no ok row with this key in the manifest")
            annotation = _newest(task.get("annotations") or [])
            if annotation is None:
                unreviewed += 1
                continue
            h, w = int(row["height"]), int(row["width"])
            if (data.get(k.HEIGHT), data.get(k.WIDTH)) not in ((None, None), (h, w)):
                raise TaskError(task_id, key, "wrong_size",
                                f"task is for a {data.get(k.WIDTH)}x{data.get(k.HEIGHT)} image, "
                                f"the manifest says {w}x{h}")
            mask = _task_mask(task_id, key, annotation, h, w)
            out.append(Correction(task_id, key, mask, reviewer_of(annotation),
                                  _time(annotation.get("updated_at")) or _time(annotation.get("created_at"))))
        except TaskError as e:
            errors.append(e)
    newest: dict[str, Correction] = {}
    for c in out:  # one key in several tasks (tasks imported twice): the newest annotation wins
        stamp = c.reviewed_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        old = newest.get(c.key)
        if old is not None:
            old_stamp = old.reviewed_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
            keep, drop = (c, old) if stamp >= old_stamp else (old, c)
            errors.append(TaskError(drop.task_id, c.key, "superseded",
                                    f"task {keep.task_id} has a newer annotation of this key (used instead)"))
            newest[c.key] = keep
        else:
            newest[c.key] = c
    return list(newest.values()), errors, unreviewed
