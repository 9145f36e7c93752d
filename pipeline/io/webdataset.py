"""WebDataset tar shards: list members from tar headers only, read one member by byte range.

A shard is an uncompressed POSIX tar (ustar, GNU or pax headers) whose members are named
``KEY.EXT``; the samples of this project use ``KEY.jpg|jpeg|png`` (image), ``KEY.seg.png``
(coarse mask) and ``KEY.gt.png`` (ground truth). Listing walks the headers with ``tarfile``
over a seekable fsspec file: it seeks over member data, so the shard is not downloaded (on S3,
roughly one ranged GET per 64 KiB window that holds a header). Each member's data offset and
size go into the SampleRef, so a worker reads one sample with ranged GETs.
"""

from __future__ import annotations

import re
import tarfile

from .fs import open_fs, to_uri

__all__ = ["list_shards", "iter_tar_members", "expand_braces", "TarMember"]

TarMember = tuple[str, int, int]  # (member name, data offset, data size)

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_HEADER_WINDOW = 1 << 16
_SHARD_SUFFIXES = (".tar",)


def expand_braces(uri: str) -> list[str]:
    """Expand WebDataset-style ranges: ``shard-{000..002}.tar`` -> three URIs (zero padded)."""
    m = _BRACE.search(uri)
    if m is None:
        return [uri]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ValueError(f"expand_braces: empty range {m.group(0)!r} in {uri!r}")
    width = len(m.group(1))
    out: list[str] = []
    for i in range(lo, hi + 1):
        out.extend(expand_braces(uri[: m.start()] + str(i).zfill(width) + uri[m.end() :]))
    return out


def list_shards(uri: str) -> list[str]:
    """Shard URIs named by ``uri``, sorted.

    uri: one ``.tar`` file, a brace range (``.../shard-{0000..0099}.tar``), a glob
    (``.../*.tar``), or a folder/prefix searched recursively for ``*.tar``.
    Raises ValueError when nothing matches, or for compressed shards (``.tar.gz``, ``.tgz``),
    which cannot be range-read.
    """
    if _BRACE.search(uri):
        return sorted(expand_braces(uri))
    fs, path = open_fs(uri)
    lowered = path.lower()
    if lowered.endswith((".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz")):
        raise ValueError(
            f"WebDataset shard {uri!r} is compressed; members of a compressed tar cannot be "
            "range-read. Use uncompressed .tar shards."
        )
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif lowered.endswith(_SHARD_SUFFIXES):
        return [uri]
    else:
        paths = fs.find(path) if fs.isdir(path) else []
    shards = sorted(to_uri(fs, p, uri) for p in paths if p.lower().endswith(_SHARD_SUFFIXES))
    if not shards:
        raise ValueError(f"no WebDataset shards (*.tar) found at {uri!r}")
    return shards


def iter_tar_members(shard_uri: str, *, strict: bool = True) -> list[TarMember]:
    """(name, data offset, data size) of every regular file in an uncompressed tar shard.

    Reads headers only (seeks over data). Leading ``./`` is removed from names. A corrupt or
    truncated shard raises ValueError naming the shard; with ``strict=False`` the members read
    before the damage are returned instead.
    """
    fs, path = open_fs(shard_uri)
    members: list[TarMember] = []
    try:
        size = fs.size(path)
        with fs.open(path, "rb", block_size=_HEADER_WINDOW, cache_type="readahead") as f:
            magic = f.read(2)
            if magic == b"\x1f\x8b":
                raise ValueError(f"WebDataset shard {shard_uri!r} is gzip-compressed; use uncompressed .tar")
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for info in tf:
                    if not info.isreg():
                        continue
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    if info.offset_data + info.size > size:
                        raise tarfile.ReadError(f"member {name!r} runs past the end of the shard")
                    members.append((name, info.offset_data, info.size))
    except FileNotFoundError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        if strict:
            raise ValueError(
                f"corrupt or truncated WebDataset shard {shard_uri!r} after {len(members)} members: {exc}"
            ) from exc
    return members
