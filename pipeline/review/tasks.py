"""Label Studio tasks for review: the labeling config, one task per reviewed object, and the
image URL Label Studio can open. Pure (dicts and arrays in, dicts and strings out).

A task::

    {"data": {"image": URL, "title": "...", "samsr_job": job id, "samsr_run": run id,
              "samsr_key": manifest key, "samsr_row_kind": "sample" | "instance" | "class",
              "samsr_image_key": ..., "samsr_image_id": ..., "samsr_annotation_id": ...,
              "samsr_category_id": ..., "samsr_width": W, "samsr_height": H},
     "predictions": [{"model_version": "coarse", "result": [brushlabels]},
                     {"model_version": "refined", "result": [brushlabels]}]}

The ``samsr_*`` fields map a reviewer's annotation back to its manifest row
(:mod:`pipeline.review.importer`); the two predictions are the pre-annotations a reviewer starts
from. Masks are brush RLE at the image's full size (:mod:`pipeline.review.brush_rle`).
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from .brush_rle import encode_mask

__all__ = ["FROM_NAME", "TO_NAME", "LABEL", "PREDICTIONS", "labeling_config", "brush_result", "build_task",
           "image_url", "TaskDataKeys"]

FROM_NAME = "mask"
TO_NAME = "image"
LABEL = "object"
#: the pre-annotations of a task, in order
PREDICTIONS = ("coarse", "refined")


class TaskDataKeys:
    """Names of the task data fields that carry the manifest identity."""

    JOB = "samsr_job"
    RUN = "samsr_run"
    KEY = "samsr_key"
    ROW_KIND = "samsr_row_kind"
    IMAGE_KEY = "samsr_image_key"
    IMAGE_ID = "samsr_image_id"
    ANNOTATION_ID = "samsr_annotation_id"
    CATEGORY_ID = "samsr_category_id"
    WIDTH = "samsr_width"
    HEIGHT = "samsr_height"


def labeling_config(colour: str = "#ff0066") -> str:
    """The project's labeling config: the image, a title naming the object, one brush label."""
    return (
        "<View>\n"
        '  <Header value="$title"/>\n'
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"    <Label value={quoteattr(LABEL)} background={quoteattr(colour)}/>\n"
        "  </BrushLabels>\n"
        "</View>\n"
    )


def brush_result(mask: np.ndarray, result_id: str) -> dict[str, Any]:
    """One ``brushlabels`` result holding ``mask`` ((H, W), non-zero = in) at full size."""
    h, w = mask.shape
    return {"id": result_id, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
            "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [LABEL]}}


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def build_task(row: dict[str, Any], image: str, coarse: np.ndarray, refined: np.ndarray,
               title: str | None = None) -> dict[str, Any]:
    """The task of one manifest row (latest ``ok`` row of its key): ``image`` (a URL Label Studio
    can open), the coarse and refined masks ((H, W) bool at the image's size) as predictions."""
    h, w = int(row["height"]), int(row["width"])
    for name, m in (("coarse", coarse), ("refined", refined)):
        if m.shape != (h, w):
            raise ValueError(f"{row['key']}: {name} mask is {m.shape[1]}x{m.shape[0]}, the image {w}x{h}")
    k = TaskDataKeys
    data = {"image": image, "title": title or row["key"], k.JOB: row["job_id"], k.RUN: row.get("run_id"),
            k.KEY: row["key"], k.ROW_KIND: row.get("row_kind") or "sample", k.IMAGE_KEY: row.get("image_key"),
            k.IMAGE_ID: _int(row.get("image_id")), k.ANNOTATION_ID: _int(row.get("annotation_id")),
            k.CATEGORY_ID: _int(row.get("category_id")), k.WIDTH: w, k.HEIGHT: h}
    predictions = [{"model_version": name, "result": [brush_result(m, f"{name}-{i}")]}
                   for i, (name, m) in enumerate(zip(PREDICTIONS, (coarse, refined)))]
    return {"data": data, "predictions": predictions}


def image_url(uri: str, *, local_root: str = "/", presign=None) -> str:
    """The URL Label Studio opens for the image at ``uri``.

    - ``http(s)://``: as is;
    - ``s3://`` (and ``gs://``, ``azure-blob://``): as is -- the project's cloud storage
      resolves it -- or ``presign(uri)`` when given (a presigned HTTPS URL);
    - a local path or ``file://``: ``/data/local-files/?d=<path relative to local_root>`` (Label
      Studio's local files serving with ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=local_root``);
    - anything else (a tar member ``shard#member``, ``memory://``): ValueError.
    """
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith(("s3://", "gs://", "azure-blob://")):
        return presign(uri) if presign is not None else uri
    if "#" in uri and ".tar" in uri.split("#", 1)[0]:
        raise ValueError(f"image {uri!r} is a member of a tar shard: Label Studio cannot open it")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"image {uri!r}: Label Studio cannot open {uri.split('://')[0]}:// URIs")
    path = posixpath.normpath(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not path.startswith("/"):
        raise ValueError(f"image {uri!r}: a relative path (give the output's absolute path)")
    root = posixpath.normpath(local_root)
    rel = posixpath.relpath(path, root)
    if rel.startswith(".."):
        raise ValueError(f"image {uri!r} is outside the local files root {local_root!r}")
    return "/data/local-files/?d=" + quote(rel)
