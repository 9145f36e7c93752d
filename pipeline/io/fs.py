"""fsspec access: one place that turns a URI into a filesystem, and small read/write helpers.

Every reader and writer in ``pipeline.io`` goes through :func:`open_fs`, so local paths,
``s3://`` (s3fs), ``memory://`` and any other protocol fsspec knows behave the same way.

S3: the endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` when set (a moto
server in tests, MinIO, R2, ...). No ``region_name`` is passed in ``client_kwargs`` (s3fs would
then send a location constraint that S3-compatible servers reject). Listing caches are off for
S3, because workers in other processes write the objects that the driver lists (masks,
manifest parts).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["open_fs", "read_bytes", "write_bytes", "join_uri", "to_uri", "is_local", "parent_uri"]


def _has_protocol(uri: str) -> bool:
    return "://" in uri or "::" in uri


def open_fs(uri: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``uri``; ``path`` has the protocol stripped.

    uri: a local path (relative or absolute), ``file://``, ``s3://bucket/key``, ``memory://...``
    or any URL fsspec opens. ``storage_options`` go to the filesystem constructor.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"open_fs: expected a non-empty URI string, got {uri!r}")
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in storage_options:
            storage_options["endpoint_url"] = endpoint
        storage_options.setdefault("use_listings_cache", False)
        if protocol == "s3a":
            uri = "s3://" + uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return fs, path


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return not _has_protocol(uri) or uri.startswith("file://")


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a filesystem path back into a URI in the style of ``like`` (the URI the user gave).

    A plain local path stays a plain path; other filesystems get their protocol back.
    """
    if isinstance(fs, LocalFileSystem) and not _has_protocol(like):
        return path
    return fs.unstrip_protocol(path)


def join_uri(base: str, *parts: str) -> str:
    """Join ``parts`` onto ``base`` with ``/`` (URIs are POSIX-style on every filesystem)."""
    out = base.rstrip("/") if base not in ("/", "") else base
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if out else part
    return out


def parent_uri(uri: str) -> str:
    """The folder of ``uri`` (``s3://b/x/list.csv`` -> ``s3://b/x``)."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        head = posixpath.dirname(rest.rstrip("/"))
        return f"{scheme}://{head}"
    return os.path.dirname(os.path.abspath(uri))


def read_bytes(uri: str, offset: int | None = None, length: int | None = None) -> bytes:
    """Read a whole object, or ``length`` bytes from ``offset`` (a ranged GET on S3).

    Raises FileNotFoundError when the object does not exist.
    """
    fs, path = open_fs(uri)
    if offset is None:
        return fs.cat_file(path)
    if length is None or offset < 0 or length < 0:
        raise ValueError(f"read_bytes({uri!r}): offset and length must both be >= 0")
    return fs.cat_file(path, start=offset, end=offset + length)


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` to ``uri`` so that readers never see a partial object; returns ``uri``.

    Local files: written to a temporary name in the same folder, then renamed over the target
    (``os.replace`` is atomic on POSIX). Object stores: one PUT, which is atomic per object.
    Writing the same bytes twice is harmless (idempotent overwrite).
    """
    fs, path = open_fs(uri)
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return uri
    fs.pipe_file(path, data)
    return uri
