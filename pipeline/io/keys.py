"""Sample keys and the per-sample error type.

A key names a sample in its dataset and, through :func:`safe_key`, its output files. Output
names use only ``[A-Za-z0-9._-]``, so a key can never climb out of the output prefix.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["SampleError", "ERROR_TYPES", "safe_key", "MAX_KEY_LENGTH"]

#: Error types a SampleError (and so a manifest ``error_type``) can carry.
ERROR_TYPES: tuple[str, ...] = (
    "bad_key",  # empty or not a string
    "duplicate_key",  # two inputs map to the same (escaped) key
    "missing_image",  # a mask/gt without its image, or the image object does not exist
    "missing_mask",  # an image without its coarse mask, or the mask object does not exist
    "missing_gt",  # a gt URI is given but the object does not exist
    "decode_error",  # truncated, corrupt or non-image bytes; unsupported pixel format
    "too_large",  # pixel count over max_pixels, checked from the header before decoding
    "aspect_mismatch",  # coarse mask aspect ratio differs from the image's beyond tolerance
    "gt_size_mismatch",  # ground truth not exactly the image's size
    "read_error",  # any other I/O failure while reading (permissions, network)
    "label_map_mode",  # a label map that is not single-channel class ids (RGB, RGBA, LA, CMYK, F, ...)
)

#: Escaped keys longer than this are shortened to a prefix plus a hash (file names <= 255 bytes).
MAX_KEY_LENGTH = 200

_SAFE = re.compile(r"[A-Za-z0-9._-]")


class SampleError(ValueError):
    """A bad input sample. Becomes an ``error`` manifest row, never a dead job.

    key: the sample's key as listed; error_type: one of :data:`ERROR_TYPES`; message: what and
    where (URI, sizes).
    """

    def __init__(self, key: str, error_type: str, message: str) -> None:
        if error_type not in ERROR_TYPES:
            raise ValueError(f"SampleError: unknown error_type {error_type!r} (key {key!r})")
        self.key = key
        self.error_type = error_type
        self.message = message
        super().__init__(f"[{error_type}] sample {key!r}: {message}")

    def __reduce__(self):  # keep the three fields through pickling (Ray ships exceptions)
        return (SampleError, (self.key, self.error_type, self.message))


def safe_key(key: str) -> str:
    """Map a sample key to a file-name-safe key made of ``[A-Za-z0-9._-]`` only.

    Rules (deterministic; documented for users):
      - characters in ``[A-Za-z0-9._-]`` are kept, so ordinary keys are unchanged;
      - every other character is replaced by ``_xHH`` per UTF-8 byte (``a/b`` -> ``a_x2Fb``,
        ``é`` -> ``_xC3_xA9``), so ``/``, ``\\`` and absolute paths cannot form path parts;
      - a result longer than :data:`MAX_KEY_LENGTH` becomes its first 183 characters, ``-``,
        and 16 hex digits of the key's sha256;
      - a leading ``.`` is escaped too (``.hidden`` -> ``_x2Ehidden``, ``..`` -> ``_x2E.``), so
        no output name is hidden or a parent directory;
      - an empty key (or one that is not a string) is rejected with
        ``SampleError(key, "bad_key", ...)``.

    Two different keys can map to the same safe key (``a/b`` and a literal ``a_x2Fb``):
    ``list_samples`` reports such collisions as ``duplicate_key``.
    """
    if not isinstance(key, str):
        raise SampleError(str(key), "bad_key", f"key {key!r}: must be a string, got {type(key).__name__}")
    if key == "":
        raise SampleError(key, "bad_key", "key '' is empty")
    out = []
    for i, ch in enumerate(key):
        if _SAFE.fullmatch(ch) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"_x{b:02X}" for b in ch.encode("utf-8", errors="surrogatepass"))
    safe = "".join(out)
    if len(safe) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
        safe = f"{safe[: MAX_KEY_LENGTH - 17]}-{digest}"
    return safe
