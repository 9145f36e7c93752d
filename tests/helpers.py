"""Synthetic samples and writers for every input layout (shared by io, pipeline and job tests).

A *sample* is a dict:
  ``key`` (str), ``image`` (H, W, 3) uint8 RGB, ``coarse`` (h, w) uint8, ``gt`` (H, W) uint8
  in {0, 255} or None. Optional overrides for corrupt-input tests: ``image_bytes``,
  ``mask_bytes``, ``gt_bytes`` (written verbatim instead of encoding the array), and
  ``mask=False`` / ``image=False`` entries to leave that file out.

Writers put the files on any fsspec URI (local, memory://, s3:// through the moto fixture)
and return the URI to give ``pipeline.io.list_samples`` with the matching layout::

    samples = [make_sample(f"s{i}", seed=i) for i in range(3)]
    uri = write_layout("webdataset", root, samples)
    refs = list_samples(uri, layout="webdataset")
"""

from __future__ import annotations

import csv
import io
import struct
import tarfile
import zlib

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from pipeline.io.fs import join_uri, open_fs

__all__ = [
    "make_sample",
    "make_samples",
    "encode_image",
    "encode_mask",
    "jpeg_with_orientation",
    "bomb_png",
    "put",
    "sample_files",
    "write_prefix_layout",
    "write_webdataset",
    "write_list_layout",
    "write_layout",
]


def make_sample(
    key: str,
    height: int = 48,
    width: int = 64,
    *,
    coarse_size: tuple[int, int] | None = None,
    seed: int = 0,
    with_gt: bool = True,
) -> dict:
    """A random image with an elliptical object, its gt and a degraded coarse mask.

    image: (height, width, 3) uint8 (gradient background, textured object); gt: (H, W) uint8
    {0, 255}; coarse: (h, w) = coarse_size or (H, W), uint8 0..255, blurred and shifted gt.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ry, rx = height * rng.uniform(0.15, 0.3), width * rng.uniform(0.15, 0.3)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    gt = inside.astype(np.uint8) * 255
    bg = np.stack([xx / width * 200, yy / height * 200, np.full_like(xx, 60)], axis=2)
    fg = np.array(rng.integers(80, 255, size=3), dtype=np.float32)
    image = np.where(inside[:, :, None], fg, bg) + rng.normal(0, 8, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    shifted = np.roll(gt, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    coarse = cv2.GaussianBlur(shifted, (0, 0), sigmaX=max(1.0, width / 40))
    if coarse_size is not None and tuple(coarse_size) != (height, width):
        h, w = coarse_size
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_AREA)
    return {"key": key, "image": image, "coarse": coarse, "gt": gt if with_gt else None}


def make_samples(n: int, height: int = 48, width: int = 64, *, prefix: str = "s", **kwargs) -> list[dict]:
    """``n`` samples with keys ``<prefix>000``, ``<prefix>001``... and seeds 0..n-1."""
    return [make_sample(f"{prefix}{i:03d}", height, width, seed=i, **kwargs) for i in range(n)]


def encode_image(image: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG or PNG bytes (PIL; RGB order preserved)."""
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if fmt in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        im.save(buf, format="PNG")
    else:
        raise ValueError(f"encode_image: unknown format {fmt!r}")
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """(h, w) uint8/uint16 (or any array PIL takes) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def pil_bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """``im`` saved by Pillow in ``fmt`` (any mode, extra save keywords passed on), as bytes."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg_with_orientation(stored: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """JPEG of ``stored`` (the pixels as stored) with EXIF Orientation tag ``orientation`` (1..8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of width x height zeros: ~50 KB compressed, width*height pixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def put(uri: str, data: bytes) -> str:
    """Write bytes to any fsspec URI (creating local folders); returns ``uri``."""
    fs, path = open_fs(uri)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)
    return uri


def sample_files(sample: dict, image_ext: str = "jpg") -> dict[str, bytes]:
    """Encoded files of a sample by role (``image``, ``mask``, ``gt``), honouring overrides."""
    files: dict[str, bytes] = {}
    if "image_bytes" in sample:
        files["image"] = sample["image_bytes"]
    elif sample.get("image") is not False and sample.get("image") is not None:
        files["image"] = encode_image(sample["image"], image_ext)
    if "mask_bytes" in sample:
        files["mask"] = sample["mask_bytes"]
    elif sample.get("mask") is not False and sample.get("coarse") is not None:
        files["mask"] = encode_mask(sample["coarse"])
    if "gt_bytes" in sample:
        files["gt"] = sample["gt_bytes"]
    elif sample.get("gt") is not None:
        files["gt"] = encode_mask(sample["gt"])
    return files


def write_prefix_layout(
    root: str,
    samples: list[dict],
    *,
    image_ext: str = "jpg",
    image_suffix: str = "_im",
    mask_suffix: str = "_seg.png",
    gt_suffix: str = "_gt.png",
) -> str:
    """BIG layout: ``<root>/<key>_im.<ext>``, ``<key>_seg.png``, ``<key>_gt.png``; returns root."""
    names = {"image": f"{image_suffix}.{image_ext}", "mask": mask_suffix, "gt": gt_suffix}
    for s in samples:
        for role, data in sample_files(s, image_ext).items():
            put(join_uri(root, s["key"] + names[role]), data)
    return root


def write_webdataset(shard_uri: str, samples: list[dict], *, image_ext: str = "jpg") -> str:
    """One uncompressed tar shard with ``KEY.<ext>``, ``KEY.seg.png``, ``KEY.gt.png``."""
    names = {"image": f".{image_ext}", "mask": ".seg.png", "gt": ".gt.png"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for s in samples:
            for role, data in sample_files(s, image_ext).items():
                info = tarfile.TarInfo(s["key"] + names[role])
                info.size = len(data)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(data))
    return put(shard_uri, buf.getvalue())


def write_list_layout(
    root: str, samples: list[dict], *, fmt: str = "csv", relative: bool = True, image_ext: str = "jpg"
) -> str:
    """Files under ``<root>/files/`` plus ``<root>/list.<fmt>`` (csv or parquet); returns the list URI.

    relative=True writes URIs relative to the list's folder (``files/KEY_im.jpg``).
    """
    rows = []
    names = {"image": f"_im.{image_ext}", "mask": "_seg.png", "gt": "_gt.png"}
    for s in samples:
        row = {"key": s["key"], "image_uri": "", "mask_uri": "", "gt_uri": ""}
        for role, data in sample_files(s, image_ext).items():
            rel = f"files/{s['key']}{names[role]}"
            uri = put(join_uri(root, rel), data)
            row[f"{role}_uri"] = rel if relative else uri
        rows.append(row)
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["key", "image_uri", "mask_uri", "gt_uri"])
        writer.writeheader()
        writer.writerows(rows)
        return put(join_uri(root, "list.csv"), text.getvalue().encode())
    if fmt == "parquet":
        table = pa.Table.from_pylist([{k: (v or None) for k, v in r.items()} for r in rows])
        out = io.BytesIO()
        pq.write_table(table, out)
        return put(join_uri(root, "list.parquet"), out.getvalue())
    raise ValueError(f"write_list_layout: unknown fmt {fmt!r}")


def write_layout(layout: str, root: str, samples: list[dict], *, per_shard: int = 2, **kwargs) -> str:
    """Write ``samples`` in ``layout`` (prefix, webdataset, list, list-parquet) under ``root``.

    Returns the URI for ``list_samples(uri, layout)`` (``list-parquet`` lists with ``list``).
    WebDataset: ``<root>/shards/shard-000000.tar``... with ``per_shard`` samples each; the
    returned URI is the shards folder.
    """
    if layout == "prefix":
        return write_prefix_layout(join_uri(root, "data"), samples, **kwargs)
    if layout == "webdataset":
        folder = join_uri(root, "shards")
        for i in range(0, max(len(samples), 1), per_shard):
            shard = join_uri(folder, f"shard-{i // per_shard:06d}.tar")
            write_webdataset(shard, samples[i : i + per_shard], **kwargs)
        return folder
    if layout == "list":
        return write_list_layout(root, samples, fmt="csv", **kwargs)
    if layout == "list-parquet":
        return write_list_layout(root, samples, fmt="parquet", **kwargs)
    raise ValueError(f"write_layout: unknown layout {layout!r}")


def randomise_bn(model, seed: int = 0, weight: tuple[float, float] = (0.5, 1.5)):
    """Non-trivial BatchNorm statistics and affine parameters (seeded), so that equivalence
    tests (BN folding, key mapping) are meaningful; returns ``model``."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    lo, hi = weight
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * (hi - lo) + lo)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def write_composites(root, n: int, height: int = 96, width: int = 128, *, seed: int = 0,
                     colour: tuple[int, int, int] = (30, 160, 90), kind: str | None = None,
                     prefix: str = "s", ext: str = "jpg", seg: bool = True,
                     first: int = 0) -> list[np.ndarray]:
    """``n`` composites (pipeline.train.composites, exact truth) in the prefix layout under the
    local folder ``root``: ``<prefix><i>_im.<ext>``, ``_gt.png`` and (``seg``) a 16x12 coarse
    ``_seg.png``. Composite i uses ``default_rng(first + i)`` over a blurred-noise foreground
    (``seed``) and a flat ``colour`` background. Returns the truths ({0, 255} uint8)."""
    from pipeline.train.composites import make_composite

    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.integers(0, 255, (200, 260, 3), dtype=np.uint8), (0, 0), 4)
    b = np.full((200, 260, 3), colour, np.uint8)
    truths = []
    kw = {"kind": kind} if kind else {}
    for i in range(n):
        c = make_composite(np.random.default_rng(first + i), a, b, height, width, **kw)
        cv2.imwrite(f"{root}/{prefix}{i}_im.{ext}", c.image[..., ::-1])
        cv2.imwrite(f"{root}/{prefix}{i}_gt.png", c.gt)
        if seg:
            small = cv2.resize(c.gt, (16, 12), interpolation=cv2.INTER_AREA)
            cv2.imwrite(f"{root}/{prefix}{i}_seg.png", small)
        truths.append(np.where(c.gt > 128, 255, 0).astype(np.uint8))
    return truths


def region_means(region, where, n, total, count):
    """Mean contrast and count per label of ``region`` over the flat positions ``where`` of dense
    per-pixel (total, count) maps (the first edge check's per-label sums: a reference)."""
    flat = region.ravel()[where]
    s = np.bincount(flat, weights=total.ravel()[where], minlength=n)
    c = np.bincount(flat, weights=count.ravel()[where], minlength=n)
    return s / np.maximum(c, 1), c
