"""Inputs and outputs: fsspec access, input layouts, guarded decoding, mask writing, manifest.

Nothing here knows about models or Ray. Typical use (one sample)::

    refs = list_samples("s3://bucket/big/test", layout="prefix")
    sample = load_sample(refs[0])          # raises SampleError(key, error_type, message)
    uri = write_mask("s3://bucket/out", sample.key, refined)   # <out>/masks/<safe_key>.png
    write_manifest_part(rows, "s3://bucket/out", "00001")       # written after the masks
"""

from .decode import (
    ASPECT_TOLERANCE,
    DEFAULT_MAX_PIXELS,
    Sample,
    decode_image,
    decode_mask,
    load_image_gt,
    load_sample,
    resize_mask,
)
from .fs import is_local, join_uri, open_fs, parent_uri, read_bytes, to_uri, write_bytes
from .keys import ERROR_TYPES, SampleError, safe_key
from .layouts import DEFAULT_SUFFIXES, LAYOUTS, SampleRef, list_samples, list_shards
from .manifest import (
    MANIFEST_SCHEMA,
    REQUIRED_COLUMNS,
    STATUSES,
    completed_keys,
    input_fields,
    latest_rows,
    manifest_dir,
    read_manifest,
    resume_state,
    rows_to_table,
    write_manifest_part,
)
from .webdataset import expand_braces, iter_tar_members
from .writer import encode_png, mask_uri, to_binary_u8, to_soft_u8, write_mask, write_masks

__all__ = [
    "ASPECT_TOLERANCE",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SUFFIXES",
    "ERROR_TYPES",
    "LAYOUTS",
    "MANIFEST_SCHEMA",
    "REQUIRED_COLUMNS",
    "STATUSES",
    "Sample",
    "SampleError",
    "SampleRef",
    "completed_keys",
    "resume_state",
    "decode_image",
    "decode_mask",
    "encode_png",
    "expand_braces",
    "input_fields",
    "is_local",
    "iter_tar_members",
    "join_uri",
    "latest_rows",
    "list_samples",
    "list_shards",
    "load_sample",
    "load_image_gt",
    "manifest_dir",
    "mask_uri",
    "open_fs",
    "parent_uri",
    "read_bytes",
    "read_manifest",
    "resize_mask",
    "rows_to_table",
    "safe_key",
    "to_binary_u8",
    "to_soft_u8",
    "to_uri",
    "write_bytes",
    "write_manifest_part",
    "write_mask",
    "write_masks",
]
