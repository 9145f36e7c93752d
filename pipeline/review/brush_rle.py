"""Label Studio's brush RLE (the ``"format": "rle"`` value of a ``brushlabels`` result), both ways.

The format (Label Studio stores brush masks with the ``@thi.ng/rle-pack`` bit packing;
``label-studio-converter`` documents the same layout) is a bit stream, most significant bit
first, padded with zero bits to whole bytes and written as a JSON list of byte values:

- header: 32 bits ``n`` (number of values), 5 bits ``word_size - 1``, then four 4-bit fields
  ``size_i - 1``: the bit widths that a chunk may use for its run length;
- chunks until ``n`` values are read: 1 bit ``repeat``, 2 bits ``i`` (which run-length width),
  ``size_i`` bits ``length - 1``; then one ``word_size``-bit value repeated ``length`` times
  (``repeat = 1``) or ``length`` values one after another (``repeat = 0``).

The values are the pixels of an RGBA image, row by row (``n = 4 * height * width``); a mask
pixel is its alpha value. Masks are written with 0 / 255 in all four channels (as Label Studio
writes them); a pixel belongs to the mask when its alpha is >= 128.

Encoding here uses ``word_size = 8`` and run-length widths (3, 4, 8, 16), repeat chunks only
(a run longer than 65536 values is split).
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_mask", "decode_mask", "encode_values", "decode_values", "BrushRleError",
           "BrushSizeError", "RUN_WIDTHS", "ALPHA_THRESHOLD"]

RUN_WIDTHS = (3, 4, 8, 16)
ALPHA_THRESHOLD = 128


class BrushRleError(ValueError):
    """An RLE list that is not a valid Label Studio brush mask (truncated, wrong size, bad bytes)."""


class BrushSizeError(BrushRleError):
    """A valid RLE of a mask of another size."""


def encode_values(values: np.ndarray, word_size: int = 8) -> list[int]:
    """A 1-D array of integers in ``[0, 2**word_size)`` -> Label Studio RLE bytes (list of int)."""
    values = np.asarray(values).ravel()
    if values.size and (values.min() < 0 or values.max() >= 2**word_size):
        raise ValueError(f"encode_values: values must fit {word_size} bits")
    n = int(values.size)
    bits = [f"{n:032b}", f"{word_size - 1:05b}", *(f"{w - 1:04b}" for w in RUN_WIDTHS)]
    if n:
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        lengths = np.diff(np.r_[starts, n])
        limit = 1 << RUN_WIDTHS[-1]
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = f"{int(values[start]):0{word_size}b}"
            while length > 0:
                take = min(length, limit)
                i = next(k for k, w in enumerate(RUN_WIDTHS) if take - 1 < (1 << w))
                bits.append(f"1{i:02b}{take - 1:0{RUN_WIDTHS[i]}b}{word}")
                length -= take
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    packed = np.packbits(np.frombuffer(stream.encode("ascii"), np.uint8) - ord("0"))
    return packed.tolist()


def decode_values(rle: list[int] | bytes) -> np.ndarray:
    """Label Studio RLE bytes -> the 1-D array of values (uint8 for word sizes up to 8, else
    int64). Raises BrushRleError for bytes outside 0..255 or a truncated stream."""
    try:
        raw = np.asarray(list(rle) if not isinstance(rle, (bytes, bytearray)) else bytearray(rle))
    except TypeError as e:
        raise BrushRleError(f"RLE is not a list of byte values ({e})") from None
    if raw.ndim != 1 or raw.size < 7 or not np.issubdtype(raw.dtype, np.integer):
        raise BrushRleError("RLE must be a list of at least 7 byte values (the header)")
    if raw.min() < 0 or raw.max() > 255:
        raise BrushRleError("RLE values must be bytes (0..255)")
    stream = (np.unpackbits(raw.astype(np.uint8)) + ord("0")).tobytes().decode("ascii")
    pos = 0

    def read(width: int) -> int:
        nonlocal pos
        if pos + width > len(stream):
            raise BrushRleError(f"RLE stream is truncated at bit {pos}")
        value = int(stream[pos : pos + width], 2)
        pos += width
        return value

    n = read(32)
    word_size = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(n, np.uint8 if word_size <= 8 else np.int64)
    i = 0
    while i < n:
        repeat = read(1)
        length = read(widths[read(2)]) + 1
        end = i + length
        if end > n:
            raise BrushRleError(f"RLE run ends at value {end}, past the {n} values of its header")
        if repeat:
            out[i:end] = read(word_size)
        else:
            for j in range(i, end):
                out[j] = read(word_size)
        i = end
    return out


def encode_mask(mask: np.ndarray) -> list[int]:
    """(H, W) mask (bool, or non-zero = in) -> Label Studio brush RLE of an RGBA image with
    0 / 255 in every channel."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask: mask must be (H, W), got shape {mask.shape}")
    values = np.repeat((mask != 0).astype(np.uint8).ravel() * 255, 4)
    return encode_values(values)


def decode_mask(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> (height, width) bool mask (alpha >= 128). Raises BrushSizeError
    when the RLE does not hold ``4 * height * width`` values (a mask of another size)."""
    values = decode_values(rle)
    if values.size != 4 * height * width:
        side = int(round((values.size / 4) ** 0.5))
        raise BrushSizeError(
            f"RLE holds {values.size} values = {values.size // 4} RGBA pixels, not {width}x{height} = "
            f"{height * width} (a mask of another size{f', e.g. about {side}x{side}' if side else ''})")
    return values.reshape(height, width, 4)[:, :, 3] >= ALPHA_THRESHOLD
