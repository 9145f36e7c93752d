"""The masks of a finished job, read and replaced object by object, for the three kinds of output:

- ``refine`` (``samsr refine``): one manifest row per sample; coarse = the input mask
  (``mask_uri``) resized to the image (``pipeline.io.resize_mask``, > 128), refined =
  ``masks/<safe_key>.png``. A correction replaces ``masks/<safe_key>.png`` (and
  ``soft/<safe_key>.png`` when the row has one, with the reviewer's mask as 0 / 255).
- ``coco`` (``samsr relabel`` of a COCO file): one row per instance; coarse = the input
  annotation (``relabel.json``'s ``coco``, decoded at full size by :mod:`pipeline.relabel.coco`),
  refined = the annotation in ``coco_parts/<image>.json``. A correction replaces that annotation's
  ``segmentation`` (compressed RLE), ``area`` and ``bbox`` -- its id and every other field are
  kept -- in the part and in the merged output file (``relabel.json``'s ``output``).
- ``labelmap`` (``samsr relabel`` of label maps): one row per class of an image; coarse =
  the input label map's class upsampled as relabel does, refined = ``labels/<image>.png == class``.
  A correction sets the reviewer's pixels to the class; pixels the reviewer took out of the class
  get the nearest-upsampled input label there when that is another class, else the ignore id
  (``relabel.json``'s ``ignore``; 0 without one). Mode, palette and transparency are kept.

Before an output file is first replaced, the pipeline's version is kept under
``<prefix>/review/machine/`` (same relative path), so nothing the pipeline wrote is lost.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np

__all__ = ["JobOutputs", "MACHINE_COPIES"]

MACHINE_COPIES = "review/machine"


def _exists(uri: str) -> bool:
    from pipeline.io import open_fs

    fs, path = open_fs(uri)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(posixpath.dirname(path))
    return fs.exists(path)


class JobOutputs:
    """The outputs under ``prefix`` (kind from ``relabel.json``: ``coco`` / ``labelmap``; none:
    ``refine``). Reads are cached per image; :meth:`replace` stages corrections, :meth:`commit`
    writes them (outputs only; the manifest rows are the caller's, written after)."""

    def __init__(self, prefix: str) -> None:
        from pipeline.io import join_uri, read_bytes
        from pipeline.relabel.quality import JOB_RECORD

        self.prefix = prefix
        try:
            self.record: dict[str, Any] = json.loads(read_bytes(join_uri(prefix, JOB_RECORD)))
            self.kind = self.record["kind"]
        except FileNotFoundError:
            self.record, self.kind = {}, "refine"
        self._input: dict | None = None
        self._parts: dict[str, dict] = {}
        self._labels: dict[str, Any] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._masks: dict[str, tuple[np.ndarray, bool]] = {}

    # ---------------------------------------------------------------- reading
    def _input_doc(self) -> dict:
        from pipeline.io import read_bytes

        if self._input is None:
            doc = json.loads(read_bytes(self.record["coco"]))
            anns = {a.get("id"): a for a in doc["annotations"] if isinstance(a, dict)}
            self._input = {"doc": doc, "anns": anns, "images": {r.get("id"): r for r in doc["images"]}}
        return self._input

    def _part(self, image_key: str) -> dict:
        from pipeline.io import read_bytes
        from pipeline.relabel.stages import coco_part_uri

        if image_key not in self._parts:
            self._parts[image_key] = json.loads(read_bytes(coco_part_uri(self.prefix, image_key)))
        return self._parts[image_key]

    def _part_annotation(self, row: dict) -> dict:
        for ann in self._part(row["image_key"])["annotations"]:
            if ann.get("id") == row["annotation_id"]:
                return ann
        raise KeyError(f"annotation {row['annotation_id']} is not in the output of image "
                       f"{row['image_key']!r}")

    def _label_map(self, image_key: str):
        from pipeline.io import read_bytes
        from pipeline.relabel.labelmaps import read_label_map
        from pipeline.relabel.stages import label_map_uri

        if image_key not in self._labels:
            data = read_bytes(label_map_uri(self.prefix, image_key))
            self._labels[image_key] = read_label_map(data, image_key)
        return self._labels[image_key]

    def _input_label_values(self, row: dict) -> np.ndarray:
        from pipeline.io import read_bytes
        from pipeline.relabel.labelmaps import read_label_map

        uri = row["mask_uri"]
        if "#" in uri and ".tar" in uri.split("#", 1)[0]:
            raise ValueError(f"input label map {uri!r} is a tar member: not supported by samsr review")
        return read_label_map(read_bytes(uri), row["image_key"]).values

    def masks(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        """(coarse, refined) of a manifest row, (H, W) bool at the image's full size. Where the
        trust policy turned the refined mask down (``accepted = false``: the output holds the coarse
        mask), refined is the turned-down one (``candidate_uri``): what the refiner proposed."""
        from pipeline.io import decode_mask, read_bytes, resize_mask

        h, w = int(row["height"]), int(row["width"])
        if self.kind == "refine":
            coarse = resize_mask(decode_mask(read_bytes(row["mask_uri"]), key=row["key"]), h, w) > 128
            refined_uri = row.get("candidate_uri") or row["output_uri"]
            refined = decode_mask(read_bytes(refined_uri), key=row["key"]) > 128
        elif self.kind == "coco":
            from pipeline.relabel.coco import annotation_size
            from pipeline.relabel.coco_masks import decode_full

            inp = self._input_doc()
            ann = inp["anns"][row["annotation_id"]]
            ann_hw = annotation_size(inp["images"][ann["image_id"]], h, w, self.record.get("scale"))
            coarse = decode_full(ann, ann_hw, (h, w)) > 0
            refined = decode_full(self._part_annotation(row), (h, w), (h, w)) > 0
        else:
            from pipeline.relabel.labelmaps import class_coarse

            cls = int(row["category_id"])
            coarse = class_coarse(self._input_label_values(row), cls, h, w, (0, 0, w, h)) > 128
            refined = self._label_map(row["image_key"]).values == cls
        return coarse, refined

    # ---------------------------------------------------------------- replacing
    def replace(self, row: dict, mask: np.ndarray) -> str:
        """Stage the reviewer's ``mask`` ((H, W) bool) for the object of ``row``; returns the URI
        of the output that will hold it. Raises ValueError / KeyError when it cannot."""
        from pipeline.relabel.stages import coco_part_uri, label_map_uri

        h, w = int(row["height"]), int(row["width"])
        if mask.shape != (h, w):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {w}x{h}")
        if self.kind == "refine":
            from pipeline.io import mask_uri

            self._masks[row["key"]] = (mask, bool(row.get("soft_output_uri")))
            return mask_uri(self.prefix, row["key"])
        if self.kind == "coco":
            from pipeline.relabel.coco_masks import encode_full

            ann = self._part_annotation(row)
            ann.update(encode_full(mask))
            self._dirty.add(("coco", row["image_key"]))
            return coco_part_uri(self.prefix, row["image_key"])
        from pipeline.relabel.labelmaps import upsample_labels

        cls = int(row["category_id"])
        lm = self._label_map(row["image_key"])
        values = lm.values
        removed = (values == cls) & ~mask
        if removed.any():
            base = upsample_labels(self._input_label_values(row), h, w)
            ignore = self.record.get("ignore")
            fill = np.where(base != cls, base, ignore if ignore is not None else 0).astype(values.dtype)
            values[removed] = fill[removed]
        values[mask] = cls
        self._dirty.add(("labelmap", row["image_key"]))
        return label_map_uri(self.prefix, row["image_key"])

    def _keep_machine_copy(self, uri: str) -> None:
        from pipeline.io import join_uri, read_bytes, write_bytes

        base = self.prefix.rstrip("/") + "/"
        rel = uri[len(base):] if uri.startswith(base) else None
        if rel is None or not _exists(uri):
            return
        copy = join_uri(self.prefix, MACHINE_COPIES, rel)
        if not _exists(copy):
            write_bytes(copy, read_bytes(uri))

    def commit(self) -> list[str]:
        """Write every staged correction (machine versions kept first); returns the URIs written."""
        from pipeline.io import mask_uri, write_bytes, write_masks
        from pipeline.relabel.labelmaps import write_label_map
        from pipeline.relabel.stages import coco_part_uri, label_map_uri

        written = []
        for key, (mask, soft) in sorted(self._masks.items()):
            binary = mask.astype(np.uint8) * 255
            self._keep_machine_copy(mask_uri(self.prefix, key))
            if soft:
                self._keep_machine_copy(mask_uri(self.prefix, key, "soft"))
            written.extend(u for u in write_masks(self.prefix, key, binary, binary if soft else None) if u)
        for kind, image_key in sorted(self._dirty):
            if kind == "coco":
                uri = coco_part_uri(self.prefix, image_key)
                self._keep_machine_copy(uri)
                written.append(write_bytes(uri, json.dumps(self._parts[image_key]).encode()))
            else:
                uri = label_map_uri(self.prefix, image_key)
                self._keep_machine_copy(uri)
                lm = self._labels[image_key]
                written.append(write_bytes(uri, write_label_map(lm, lm.values)))
        if self.kind == "coco" and self._dirty:
            written.append(self._commit_merged())
        self._masks.clear()
        self._dirty.clear()
        return written

    def _commit_merged(self) -> str:
        """The merged COCO output with the corrected annotations of the staged parts (by image id
        and annotation id; order and every other record unchanged)."""
        from pipeline.io import read_bytes, write_bytes

        uri = self.record["output"]
        self._keep_machine_copy(uri)
        doc = json.loads(read_bytes(uri))
        fixed = {}
        for _, image_key in self._dirty:
            part = self._parts[image_key]
            for ann in part["annotations"]:
                fixed[(part["image_id"], ann.get("id"))] = ann
        doc["annotations"] = [fixed.get((a.get("image_id"), a.get("id")), a) if isinstance(a, dict) else a
                              for a in doc["annotations"]]
        return write_bytes(uri, json.dumps(doc).encode())
