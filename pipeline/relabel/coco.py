"""COCO instance annotations for re-labeling: index, parse and validate (rasterising into
refinement windows and encoding refined masks back: ``pipeline.relabel.coco_masks``). Pure: dicts
and arrays in and out (no storage, no Ray).

Rules (docs/relabel.md repeats them):

- **Annotation resolution.** An image record's ``width``/``height`` give the size the annotations
  were drawn at; the real image may be larger (annotations made on a resized copy). Polygons are
  scaled by ``(W / width, H / height)`` and rasterised at full resolution (pycocotools' polygon
  rasteriser, so COCO's own pixel convention); RLE masks are decoded at the annotation size and
  upsampled bilinearly (half-pixel centres, threshold at 128: the data contract for coarse masks).
  Without ``width``/``height`` in the record, ``scale`` (full / annotation size) must be given.
  The aspect ratios of the record and the image must agree within 2% (else the whole image is an
  ``aspect_mismatch`` error).
- **Validation**, each failure an :class:`AnnotationError` naming the annotation id:
  ``category_missing`` (no ``category_id`` or one not in ``categories``), ``segmentation_missing``,
  ``bad_polygon`` (coordinates that are not numbers, odd in number or non-finite; edges that
  cross each other; or every part degenerate: fewer than 3 distinct points or zero area -- a
  degenerate part of a multi-part annotation, like the one-pixel slivers of a traced outline, is
  left out and the instance row says so in ``null_reason``; edges that only touch, repeated
  points and an explicit closing point are fine), ``bad_rle`` (``size`` different from the annotation size,
  counts that do not add up to height x width, undecodable counts), ``empty_annotation``.
- **Crowd** (``iscrowd = 1``) annotations are not refined: copied unchanged when the annotation
  size equals the image size, else upsampled to it (bilinear, threshold 128) with area and bbox
  recomputed, so the output stays consistent with its image records.
- **Output.** Every field of every annotation is kept; a refined instance's ``segmentation``
  becomes compressed RLE (``counts`` as a str) of the full-resolution mask, ``area`` its pixel
  count and ``bbox`` ``[x, y, w, h]`` of its pixels. Image records get the real ``width`` and
  ``height``. An annotation that fails validation is kept as it was (the manifest names it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AnnotationError",
    "CocoIndex",
    "index_coco",
    "annotation_size",
    "check_annotation",
    "ParsedAnnotation",
    "parse_annotation",
    "polygon_self_intersects",
    "dropped_parts",
    "ASPECT_TOLERANCE",
]

ASPECT_TOLERANCE = 0.02


class AnnotationError(ValueError):
    """A bad annotation: ``error_type`` (a short code) and a message naming the annotation id."""

    def __init__(self, annotation_id: Any, error_type: str, message: str) -> None:
        self.annotation_id = annotation_id
        self.error_type = error_type
        self.message = f"annotation {annotation_id}: {message}"
        super().__init__(f"{error_type}: {self.message}")

    def __reduce__(self):
        return (_rebuild, (self.annotation_id, self.error_type, self.message))


def _rebuild(annotation_id, error_type, message):
    err = AnnotationError(annotation_id, error_type, "")
    err.message = message
    err.args = (f"{error_type}: {message}",)
    return err


@dataclass
class CocoIndex:
    """A COCO dict indexed for the driver: image records by id (input order), annotation
    positions per image id, annotations whose image id is unknown, category ids."""

    images: dict[Any, dict]
    by_image: dict[Any, list[int]]
    orphans: list[int]
    categories: set
    n_annotations: int
    doc: dict = field(repr=False)


def index_coco(doc: Any) -> CocoIndex:
    """Index a parsed COCO instances dict. A malformed file (not a dict, no ``images`` /
    ``annotations`` list, image records without ``id``/``file_name``, duplicate image ids) is a
    ValueError naming the problem: nothing can be planned from it."""
    if not isinstance(doc, dict):
        raise ValueError(f"COCO file: top level must be an object, got {type(doc).__name__}")
    for name in ("images", "annotations"):
        if not isinstance(doc.get(name), list):
            raise ValueError(f"COCO file: {name!r} must be a list")
    cats = doc.get("categories", [])
    if not isinstance(cats, list):
        raise ValueError("COCO file: 'categories' must be a list")
    images: dict[Any, dict] = {}
    for i, rec in enumerate(doc["images"]):
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("file_name"), str):
            raise ValueError(f"COCO file: images[{i}] needs an 'id' and a 'file_name'")
        if rec["id"] in images:
            raise ValueError(f"COCO file: duplicate image id {rec['id']!r} (images[{i}])")
        images[rec["id"]] = rec
    by_image: dict[Any, list[int]] = defaultdict(list)
    orphans: list[int] = []
    for j, ann in enumerate(doc["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id in images:
            by_image[image_id].append(j)
        else:
            orphans.append(j)
    categories = {c.get("id") for c in cats if isinstance(c, dict)}
    return CocoIndex(images, dict(by_image), orphans, categories, len(doc["annotations"]), doc)


def annotation_size(record: dict, height: int, width: int, scale: float | None = None) -> tuple[int, int]:
    """(h, w) the annotations of ``record`` were drawn at, for an image that is really
    (height, width). From the record's ``width``/``height``; else ``scale`` (full / annotation
    size). Raises AnnotationError(image id, 'aspect_mismatch' / 'missing_size')."""
    rid = record.get("id")
    if scale is not None:
        if not (scale > 0):
            raise ValueError(f"relabel.scale: must be > 0, got {scale!r}")
        return max(1, round(height / scale)), max(1, round(width / scale))
    h, w = record.get("height"), record.get("width")
    if not (isinstance(h, (int, float)) and isinstance(w, (int, float)) and h >= 1 and w >= 1):
        raise AnnotationError(rid, "missing_size",
                              f"image {rid}: no width/height in its record and no relabel.scale given")
    h, w = int(h), int(w)
    expected = w * height / width
    if abs(h - expected) > max(1.0, ASPECT_TOLERANCE * expected):
        raise AnnotationError(
            rid, "aspect_mismatch",
            f"image {rid}: record says {w}x{h}, the image is {width}x{height} (aspect ratios differ)",
        )
    return h, w


def polygon_self_intersects(xy: np.ndarray) -> bool:
    """True when two edges of the closed polygon ``xy`` ((n, 2) float) cross: they meet at a
    point strictly inside both (a bow tie, a loop drawn across itself). Edges that only touch --
    at a shared vertex, along a common stretch, or a vertex lying on another edge, as in the
    outlines ``cv2.findContours`` draws around one-pixel-wide parts -- are not crossings: COCO's
    rasteriser fills those as intended. Vectorised over edge pairs, in chunks."""
    n = len(xy)
    if n < 4:
        return False
    a = xy
    d = np.roll(xy, -1, axis=0) - a

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    idx = np.arange(n)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n, chunk):
        i = idx[s : s + chunk]
        ai, di = a[i][:, None, :], d[i][:, None, :]
        r = a[None] - ai
        denom = cross(di, d[None])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = cross(r, d[None]) / denom
            u = cross(r, di) / denom
        crossing = (denom != 0) & (t > 0) & (t < 1) & (u > 0) & (u < 1)
        if crossing.any():
            return True
    return False


def _polygons(ann: dict) -> tuple[list[np.ndarray], list[str]]:
    """(usable polygons as (n, 2) float arrays, reasons of the degenerate parts left out)."""
    aid = ann.get("id")
    seg = ann["segmentation"]
    if not seg:
        raise AnnotationError(aid, "bad_polygon", "empty polygon list")
    out, dropped = [], []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
            raise AnnotationError(aid, "bad_polygon", f"polygon {k} is not a list of numbers")
        if len(poly) % 2:
            raise AnnotationError(aid, "bad_polygon",
                                  f"polygon {k} has an odd number of coordinates ({len(poly)})")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise AnnotationError(aid, "bad_polygon", f"polygon {k} has non-finite coordinates")
        if len(xy) < 3:
            dropped.append(f"polygon {k} has {len(xy)} points (needs 3)")
            continue
        keep = np.any(xy != np.roll(xy, -1, axis=0), axis=1)  # repeated points / explicit closing point
        if keep.sum() < 3:
            dropped.append(f"polygon {k} has fewer than 3 distinct points")
            continue
        if polygon_self_intersects(xy[keep]):
            raise AnnotationError(aid, "bad_polygon", f"polygon {k} is self-intersecting")
        x, y = xy[:, 0], xy[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        if area <= 0:
            dropped.append(f"polygon {k} has zero area (degenerate)")
            continue
        out.append(xy)
    if not out:
        raise AnnotationError(aid, "bad_polygon", "; ".join(dropped))
    return out, dropped


def dropped_parts(ann: dict) -> list[str]:
    """Why parts of a multi-polygon annotation are left out (degenerate: fewer than 3 distinct
    points or zero area), e.g. the one-pixel slivers of a traced outline; [] for RLE."""
    return _polygons(ann)[1] if _kind(ann) == "polygon" else []


def _rle(ann: dict, h: int, w: int) -> dict:
    """The annotation's RLE (compressed, counts bytes) at (h, w), validated."""
    from pycocotools import mask as mask_utils

    aid = ann.get("id")
    seg = ann["segmentation"]
    size = seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and list(size) == [h, w]):
        raise AnnotationError(aid, "bad_rle", f"RLE size {size!r} != the annotation size [{h}, {w}]")
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            raise AnnotationError(aid, "bad_rle", "uncompressed RLE counts must be non-negative integers")
        if sum(counts) != h * w:
            raise AnnotationError(aid, "bad_rle",
                                  f"RLE counts add up to {sum(counts)}, not {h}x{w} = {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii", "replace")
    if not isinstance(counts, bytes):
        raise AnnotationError(aid, "bad_rle", f"RLE counts of type {type(counts).__name__}")
    rle = {"size": [h, w], "counts": counts}
    # compressed counts: decode to the run lengths' sum through pycocotools (area + a bounds check)
    try:
        total = _compressed_total(counts)
    except ValueError as e:
        raise AnnotationError(aid, "bad_rle", f"undecodable compressed counts ({e})") from None
    if total != h * w:
        raise AnnotationError(aid, "bad_rle", f"RLE counts add up to {total}, not {h}x{w} = {h * w}")
    return rle


def _compressed_total(counts: bytes) -> int:
    """Sum of the run lengths of COCO's compressed RLE string (LEB128-like, 5 bits per char,
    deltas from the run two back after the third run) -- pycocotools does not validate it."""
    total, runs, p, m = 0, [], 0, 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("truncated")
            c = counts[p] - 48
            if c < 0 or c > 63:
                raise ValueError(f"bad character {chr(counts[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if m > 2:
            x += runs[m - 2]
        if x < 0:
            raise ValueError("negative run")
        runs.append(x)
        total += x
        m += 1
    return total


def _kind(ann: dict) -> str:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return "polygon"
    if isinstance(seg, dict):
        return "rle"
    raise AnnotationError(ann.get("id"), "segmentation_missing", "no polygon or RLE segmentation")


def check_annotation(ann: Any, categories: set) -> None:
    """Fields every annotation needs: a dict with ``category_id`` in ``categories`` and a
    segmentation. Raises AnnotationError."""
    if not isinstance(ann, dict):
        raise AnnotationError(None, "bad_annotation", f"not an object: {type(ann).__name__}")
    aid = ann.get("id")
    if "id" not in ann:
        raise AnnotationError(None, "bad_annotation", f"no 'id' (image_id {ann.get('image_id')!r})")
    cat = ann.get("category_id")
    if cat is None:
        raise AnnotationError(aid, "category_missing", "no category_id")
    if cat not in categories:
        raise AnnotationError(aid, "category_missing", f"category_id {cat!r} is not in 'categories'")
    _kind(ann)


@dataclass(frozen=True)
class ParsedAnnotation:
    """An annotation validated once (the polygon and RLE checks are not cheap): its polygons at
    the annotation size and the degenerate parts left out, or its RLE."""

    ann: dict
    kind: str  # "polygon" | "rle"
    polygons: tuple = ()
    dropped: tuple = ()
    rle: dict | None = None


def parse_annotation(ann: dict | ParsedAnnotation, ann_hw: tuple[int, int]) -> ParsedAnnotation:
    """Validate ``ann`` drawn at ``ann_hw`` once; the functions below take the result (or the
    annotation itself, which they then parse). Raises AnnotationError."""
    if isinstance(ann, ParsedAnnotation):
        return ann
    if _kind(ann) == "polygon":
        polygons, dropped = _polygons(ann)
        return ParsedAnnotation(ann, "polygon", tuple(polygons), tuple(dropped))
    return ParsedAnnotation(ann, "rle", rle=_rle(ann, *ann_hw))
