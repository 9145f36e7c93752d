"""A FiftyOne dataset of reviewed objects, written without FiftyOne: its JSON dataset format
(``fiftyone.types.FiftyOneDataset``; a ``samples.json`` of sample dicts, read by FiftyOne's
``LegacyFiftyOneDatasetImporter`` when ``metadata.json`` names no version), so samsr's venv never
imports ``fiftyone``. Load it with::

    import fiftyone as fo
    ds = fo.Dataset.from_dir(dataset_dir=DEST, dataset_type=fo.types.FiftyOneDataset, name="review")
    fo.launch_app(ds.sort_by("trust_score"))

One sample per object: ``filepath`` (the image; local files only: FiftyOne opens local media),
``coarse`` / ``refined`` / ``ground_truth`` as ``Segmentation`` labels (``mask_path``: PNGs of
DEST/masks/, 0 / 255 at the image's full size; ground truth only where the row has one), and
every scalar column of the object's latest manifest row as a sample field (``key``,
``trust_score``, ``mba_refined``, ``change_iou``, ...; nulls left out).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from typing import Any

__all__ = ["RESERVED", "sample_fields", "build_sample", "METADATA"]

#: fields FiftyOne owns on every sample: a manifest column of this name is left out
RESERVED = frozenset({"id", "_id", "filepath", "tags", "metadata", "created_at", "last_modified_at",
                      "coarse", "refined", "ground_truth"})
#: metadata.json: an image dataset, no version (the JSON sample format)
METADATA = {"media_type": "image"}


def sample_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The manifest row's scalar columns as sample fields: str / int / float / bool as they are,
    timestamps as ISO 8601 strings; nulls and FiftyOne's own field names left out."""
    out = {}
    for name, value in row.items():
        if value is None or name in RESERVED:
            continue
        if isinstance(value, dt.datetime):
            out[name] = value.isoformat()
        elif isinstance(value, (str, bool, int, float)):
            out[name] = value
    return out


def build_sample(row: dict[str, Any], image_path: str, masks: dict[str, str]) -> dict[str, Any]:
    """One sample dict: ``image_path`` (absolute local path), ``masks`` (label field -> PNG path,
    e.g. ``{"coarse": ..., "refined": ..., "ground_truth": ...}``), the row's scalar fields."""
    if not posixpath.isabs(image_path):
        raise ValueError(f"{row['key']}: image path {image_path!r} is not absolute")
    sample: dict[str, Any] = {"filepath": image_path, "tags": ["samsr-review"]}
    sample.update(sample_fields(row))
    for name, path in masks.items():
        sample[name] = {"_cls": "Segmentation", "mask_path": path}
    return sample
