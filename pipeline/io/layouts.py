"""Input layouts -> a sorted list of SampleRef.

Layouts (DESIGN §4):
  - ``prefix``: files under a folder/prefix (searched recursively) named ``NAME_im.jpg``
    (also ``.jpeg``/``.png``), ``NAME_seg.png`` and optional ``NAME_gt.png`` -- the BIG
    dataset's layout. The key is the path relative to the prefix without the suffix
    (``sub/NAME`` for files in sub-folders). Suffixes are configurable and matched
    case-insensitively, longest first.
  - ``webdataset``: uncompressed tar shards with members ``KEY.jpg|jpeg|png``,
    ``KEY.seg.png``, ``KEY.gt.png`` (see :mod:`pipeline.io.webdataset`); refs carry byte ranges.
  - ``list``: a CSV or Parquet file with columns ``key, image_uri, mask_uri[, gt_uri]``;
    relative URIs are resolved against the list's folder; empty cells mean "absent".
  - ``auto``: ``list`` for ``.csv``/``.parquet``/``.pq``, ``webdataset`` for ``.tar`` or a
    brace range, else ``prefix``.

Problems found while listing are not dropped: the ref carries ``problem``/``problem_message``
and :func:`pipeline.io.load_sample` raises the matching SampleError, so they end as error rows.
Reported: ``duplicate_key`` (two files or rows for one role of a key, or two keys with the same
escaped form), ``missing_mask``, ``missing_image`` (mask or gt without an image), ``bad_key``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from .fs import open_fs, parent_uri, to_uri
from .keys import SampleError, safe_key
from .webdataset import iter_tar_members, list_shards

__all__ = ["SampleRef", "list_samples", "list_shards", "LAYOUTS", "DEFAULT_SUFFIXES"]

log = logging.getLogger(__name__)

LAYOUTS = ("prefix", "webdataset", "list", "auto")
#: Shards listed concurrently (I/O bound: ranged GETs of tar headers).
LISTING_THREADS = 16

#: Default (image suffixes, mask suffix, gt suffix) per layout.
DEFAULT_SUFFIXES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "prefix": (("_im.jpg", "_im.jpeg", "_im.png"), "_seg.png", "_gt.png"),
    "webdataset": ((".jpg", ".jpeg", ".png"), ".seg.png", ".gt.png"),
}


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's files are. Plain fields only, so it travels through Ray and Arrow.

    ``*_uri``: the object to show in the manifest; for tar members ``<shard>#<member>``.
    ``*_offset``/``*_length``: byte range of a tar member inside ``shard`` (None otherwise).
    ``shard``: the tar shard, list file or folder the sample came from.
    ``problem``: an error type found while listing (raised by ``load_sample``), or None.
    """

    key: str
    image_uri: str | None
    mask_uri: str | None
    gt_uri: str | None = None
    shard: str | None = None
    image_offset: int | None = None
    image_length: int | None = None
    mask_offset: int | None = None
    mask_length: int | None = None
    gt_offset: int | None = None
    gt_length: int | None = None
    problem: str | None = None
    problem_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> SampleRef:
        """Rebuild from a dict (e.g. a Ray Data row); NaN/numpy values become None/int/str."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = row.get(f.name)
            if v is not None and isinstance(v, float) and math.isnan(v):
                v = None
            if v is not None:
                v = int(v) if f.name.endswith(("_offset", "_length")) else str(v)
            kwargs[f.name] = v
        return cls(**kwargs)

    def source(self, role: str) -> tuple[str | None, int | None, int | None]:
        """(URI to read, offset, length) for role ``image``, ``mask`` or ``gt``."""
        uri = getattr(self, f"{role}_uri")
        offset = getattr(self, f"{role}_offset")
        if uri is not None and offset is not None:
            return self.shard, offset, getattr(self, f"{role}_length")
        return uri, None, None


# key -> role -> list of (uri, offset, length); plus key -> shard
_Entries = dict[str, dict[str, list[tuple[str, int | None, int | None]]]]


def _suffixes(layout: str, image_suffix, mask_suffix, gt_suffix) -> list[tuple[str, str]]:
    d_img, d_mask, d_gt = DEFAULT_SUFFIXES[layout]
    img = image_suffix if image_suffix is not None else d_img
    img = (img,) if isinstance(img, str) else tuple(img)
    pairs = [(s.lower(), "image") for s in img]
    pairs.append(((mask_suffix if mask_suffix is not None else d_mask).lower(), "mask"))
    if gt_suffix != "":
        pairs.append(((gt_suffix if gt_suffix is not None else d_gt).lower(), "gt"))
    for s, _ in pairs:
        if not s:
            raise ValueError(f"list_samples: empty suffix in {pairs} for layout {layout!r}")
    return sorted(pairs, key=lambda p: -len(p[0]))


def _match(name: str, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    lowered = name.lower()
    for suffix, role in pairs:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], role
    return None


def _check_bucket(fs, base: str, uri: str) -> None:
    """Object stores: say so when the bucket itself does not exist (else: "no samples found")."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not {"s3", "s3a", "gs", "gcs"} & set(protocols):
        return
    bucket = base.split("/", 1)[0]
    try:
        exists = fs.exists(bucket)
    except Exception:  # no permission to look: leave the message as it is
        return
    if not exists:
        raise ValueError(f"bucket {bucket!r} of {uri!r} does not exist")


def _list_prefix(uri: str, pairs) -> tuple[_Entries, dict[str, str]]:
    fs, base = open_fs(uri)
    base = base.rstrip("/")
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(base)
    paths = fs.find(base) if fs.isdir(base) else []
    entries: _Entries = defaultdict(lambda: defaultdict(list))
    shards: dict[str, str] = {}
    for p in sorted(paths):
        rel = p[len(base) :].lstrip("/")
        hit = _match(rel, pairs)
        if hit is None:
            continue
        key, role = hit
        entries[key][role].append((to_uri(fs, p, uri), None, None))
        shards.setdefault(key, to_uri(fs, posixpath.dirname(p), uri))
    if not entries:
        _check_bucket(fs, base, uri)
        raise ValueError(f"no samples found under {uri!r} (suffixes {[s for s, _ in pairs]})")
    return entries, shards


def _list_webdataset(uri: str, pairs, strict: bool) -> tuple[_Entries, dict[str, str]]:
    entries: _Entries = defaultdict(lambda: defaultdict(list))
    shards: dict[str, str] = {}
    shard_uris = list_shards(uri)
    # headers of one shard are a chain of reads; shards are independent, so list them in threads
    with ThreadPoolExecutor(max_workers=max(1, min(LISTING_THREADS, len(shard_uris)))) as pool:
        members = list(pool.map(lambda s: iter_tar_members(s, strict=strict), shard_uris))
    for shard, shard_members in zip(shard_uris, members):
        for name, offset, size in shard_members:
            hit = _match(name, pairs)
            if hit is None:
                continue
            key, role = hit
            entries[key][role].append((f"{shard}#{name}", offset, size))
            shards.setdefault(key, shard)
    return entries, shards


def _resolve(value: str, base_dir: str) -> str:
    if "://" in value or value.startswith("/"):
        return value
    if "://" in base_dir:
        scheme, rest = base_dir.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, value))}"
    return posixpath.normpath(posixpath.join(base_dir, value))


def _read_list_rows(uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    fs, path = open_fs(uri)
    data = fs.cat_file(path)
    lowered = path.lower()
    if lowered.endswith((".parquet", ".pq")):
        table = pq.read_table(io.BytesIO(data))
        rows = [{k: (None if v is None else str(v)) for k, v in r.items()} for r in table.to_pylist()]
        return table.column_names, rows
    if lowered.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    raise ValueError(f"sample list {uri!r}: expected a .csv, .parquet or .pq file")


def _list_table(uri: str) -> tuple[_Entries, dict[str, str]]:
    columns, rows = _read_list_rows(uri)
    for col in ("key", "image_uri", "mask_uri"):
        if col not in columns:
            raise ValueError(f"sample list {uri!r}: missing column {col!r} (has {columns})")
    base_dir = parent_uri(uri)
    entries: _Entries = defaultdict(lambda: defaultdict(list))
    shards: dict[str, str] = {}
    for row in rows:
        key = (row.get("key") or "").strip()
        entry = entries[key]
        for role in ("image", "mask", "gt"):
            value = row.get(f"{role}_uri")
            if value is not None and value.strip():
                entry[role].append((_resolve(value.strip(), base_dir), None, None))
        shards.setdefault(key, uri)
    return entries, shards


def _finalise(entries: _Entries, shards: dict[str, str]) -> list[SampleRef]:
    refs: list[SampleRef] = []
    for key in sorted(entries):
        roles = entries[key]
        problem = message = None
        dups = {r: [u for u, _, _ in v] for r, v in roles.items() if len(v) > 1}
        if dups:
            problem, message = "duplicate_key", f"several inputs for key {key!r}: {dups}"
        elif not roles.get("image"):
            problem, message = "missing_image", f"no image for key {key!r} (found {sorted(roles)})"
        elif not roles.get("mask"):
            problem, message = "missing_mask", f"no coarse mask for image {roles['image'][0][0]!r}"
        fields: dict[str, Any] = {}
        for role in ("image", "mask", "gt"):
            if roles.get(role):
                uri, offset, length = roles[role][0]
                fields.update({f"{role}_uri": uri, f"{role}_offset": offset, f"{role}_length": length})
        refs.append(
            SampleRef(
                key=key,
                image_uri=fields.pop("image_uri", None),
                mask_uri=fields.pop("mask_uri", None),
                shard=shards.get(key),
                problem=problem,
                problem_message=message,
                **fields,
            )
        )
    # keys that escape to the same output name collide: report every one of them
    by_safe: dict[str, list[int]] = defaultdict(list)
    for i, ref in enumerate(refs):
        try:
            by_safe[safe_key(ref.key)].append(i)
        except SampleError as exc:
            if ref.problem is None:
                refs[i] = dataclasses.replace(ref, problem="bad_key", problem_message=exc.message)
    for safe, idx in by_safe.items():
        if len(idx) > 1:
            names = [refs[i].key for i in idx]
            for i in idx:
                refs[i] = dataclasses.replace(
                    refs[i],
                    problem="duplicate_key",
                    problem_message=f"keys {names} all map to output name {safe!r}",
                )
    counts: dict[str, int] = defaultdict(int)
    for ref in refs:
        if ref.problem:
            counts[ref.problem] += 1
    if counts:
        log.warning("listing found problems (they become error rows): %s", dict(counts))
    return refs


def list_samples(
    uri: str,
    layout: str = "prefix",
    *,
    image_suffix: str | tuple[str, ...] | None = None,
    mask_suffix: str | None = None,
    gt_suffix: str | None = None,
    strict: bool = True,
) -> list[SampleRef]:
    """List the samples at ``uri`` in ``layout``, sorted by key (deterministic).

    image_suffix / mask_suffix / gt_suffix: override :data:`DEFAULT_SUFFIXES` for the
    ``prefix`` and ``webdataset`` layouts (``gt_suffix=""`` ignores ground truth).
    strict: for ``webdataset``, a corrupt shard raises ValueError (False: keep the members read
    before the damage, with a warning).
    Raises ValueError for an unknown layout, no samples under a prefix, no shards, or a list
    without the required columns.

    Shard by shard for huge datasets: ``list_shards(uri)`` then ``list_samples(shard,
    "webdataset")`` per shard (duplicate keys are then only detected within a shard).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"list_samples: unknown layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "auto":
        lowered = uri.lower().rstrip("/")
        if lowered.endswith((".csv", ".parquet", ".pq")):
            layout = "list"
        elif lowered.endswith(".tar") or "{" in uri:
            layout = "webdataset"
        else:
            layout = "prefix"
    if layout == "list":
        entries, shards = _list_table(uri)
    elif layout == "webdataset":
        pairs = _suffixes(layout, image_suffix, mask_suffix, gt_suffix)
        entries, shards = _list_webdataset(uri, pairs, strict)
    else:
        entries, shards = _list_prefix(uri, _suffixes(layout, image_suffix, mask_suffix, gt_suffix))
    return _finalise(entries, shards)
