"""Label maps as files: reading and writing class-id PNGs (L, P, I;16, I, 1-bit), and the errors
for colour, undecodable, truncated and oversized inputs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.io.keys import SampleError
from pipeline.relabel.labelmaps import (
    LabelMap,
    read_label_map,
    write_label_map,
)
from tests.helpers import bomb_png, pil_bytes


def _palette_image(values: np.ndarray, palette: bytes) -> Image.Image:
    im = Image.fromarray(values.astype(np.uint8))
    im.putpalette(palette, "RGB")
    assert im.mode == "P"
    return im


# VOC-like palette: 22 entries, not a grey ramp, so a lost palette or an RGB conversion shows.
_PALETTE = bytes(v for i in range(22) for v in ((i * 37) % 256, (i * 91 + 13) % 256, (255 - i * 11) % 256))


# ---------------------------------------------------------------- reading and writing


@pytest.mark.parametrize("mode, dtype, seed, shape, extremes", [
    ("L", np.uint8, 0, (23, 31), ((0, 0, 0), (1, 1, 255))),
    ("I;16", np.uint16, 2, (19, 13), ((0, 0, 0), (0, 1, 65535))),
])
def test_round_trip_grey_modes(mode, dtype, seed, shape, extremes):
    values = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    for y, x, v in extremes:
        values[y, x] = v
    label = read_label_map(pil_bytes(Image.fromarray(values)), "k")
    assert label.mode == mode and label.values.dtype == dtype and label.palette is None
    np.testing.assert_array_equal(label.values, values)
    again = read_label_map(write_label_map(label, label.values), "k")
    assert again.mode == mode and again.values.dtype == dtype and again.palette is None
    np.testing.assert_array_equal(again.values, values)


@pytest.mark.parametrize("transparency", [bytes([0, 128, 255, 7]), 3])
def test_round_trip_P_keeps_indices_palette_and_transparency(transparency):
    values = np.random.default_rng(1).integers(0, 21, (17, 29)).astype(np.uint8)
    values[-1, -1] = 21
    data = pil_bytes(_palette_image(values, _PALETTE), transparency=transparency)
    label = read_label_map(data, "k")
    assert label.mode == "P" and label.values.dtype == np.uint8
    np.testing.assert_array_equal(label.values, values)  # indices, not colours
    assert label.palette == _PALETTE
    assert label.transparency == transparency
    again = read_label_map(write_label_map(label, label.values), "k")
    assert again.mode == "P" and again.palette == _PALETTE and again.transparency == transparency
    np.testing.assert_array_equal(again.values, values)
    # new values (a merged map) keep the palette too
    merged = np.where(values == 3, 255, values).astype(np.uint8)
    out = read_label_map(write_label_map(label, merged), "k")
    np.testing.assert_array_equal(out.values, merged)
    assert out.palette[: len(_PALETTE)] == _PALETTE


def test_write_P_index_past_a_short_palette_is_kept():
    """Pillow packs a 3-entry palette image into 2 bits; index 9 must not become 9 & 3 = 1."""
    label = read_label_map(pil_bytes(_palette_image(np.array([[0, 1], [2, 1]]), bytes(range(9)))), "k")
    assert len(label.palette) == 9
    values = np.array([[0, 1], [2, 9]], np.uint8)
    out = read_label_map(write_label_map(label, values), "k")
    np.testing.assert_array_equal(out.values, values)
    assert out.palette[:9] == bytes(range(9)) and len(out.palette) == 30


def test_mode_I_reads_int32_and_writes_16_bit_png():
    values = np.array([[0, 1, 70000], [-3, 5, 40000]], np.int32)
    label = read_label_map(pil_bytes(Image.fromarray(values), "TIFF"), "k")
    assert label.mode == "I" and label.values.dtype == np.int32
    np.testing.assert_array_equal(label.values, values)
    with pytest.raises(ValueError, match="range 0..65535"):
        write_label_map(label, values)
    ok = np.array([[0, 1, 65535], [3, 5, 40000]], np.int32)
    out = read_label_map(write_label_map(label, ok), "k")
    assert out.mode == "I;16"  # PNG has no 32-bit grey
    np.testing.assert_array_equal(out.values, ok)


def test_one_bit_reads_as_L_zero_one():
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    label = read_label_map(pil_bytes(Image.fromarray(bits)), "k")
    assert label.mode == "L" and label.values.dtype == np.uint8
    np.testing.assert_array_equal(label.values, bits.astype(np.uint8))


def test_multi_frame_reads_the_first_frame():
    a = np.full((5, 6), 3, np.uint8)
    b = np.full((5, 6), 9, np.uint8)
    data = pil_bytes(Image.fromarray(a), "TIFF", save_all=True, append_images=[Image.fromarray(b)])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    np.testing.assert_array_equal(read_label_map(data, "k").values, a)


@pytest.mark.parametrize(
    "mode, values, message",
    [
        ("L", np.array([[0, 256]]), "0..255"),
        ("P", np.array([[-1, 2]]), "0..255"),
        ("I;16", np.array([[0, 65536]]), "0..65535"),
        ("L", np.array([[0.0, 1.0]]), "integer"),
        ("L", np.zeros((2, 2, 3), np.uint8), "non-empty"),
    ],
)
def test_write_rejects_values_outside_the_mode(mode, values, message):
    label = LabelMap(np.zeros((1, 2), np.uint8), mode, _PALETTE if mode == "P" else None)
    with pytest.raises(ValueError, match=message):
        write_label_map(label, values)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "CMYK"])
def test_colour_label_maps_are_rejected(mode):
    im = Image.new(mode, (8, 6))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    with pytest.raises(SampleError) as err:
        read_label_map(pil_bytes(im, fmt), "img/7")
    assert err.value.error_type == "label_map_mode" and err.value.key == "img/7"
    assert f"mode {mode}" in err.value.message and "single-channel class ids" in err.value.message


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "junk", "bad-png-header"],
)
def test_undecodable_bytes_are_decode_error(data):
    with pytest.raises(SampleError) as err:
        read_label_map(data, "k")
    assert err.value.error_type == "decode_error"


def test_truncated_png_is_decode_error():
    values = np.random.default_rng(3).integers(0, 256, (64, 64)).astype(np.uint8)
    data = pil_bytes(Image.fromarray(values))
    with pytest.raises(SampleError) as err:
        read_label_map(data[: len(data) // 2], "k")
    assert err.value.error_type == "decode_error"


def test_too_large_from_the_header():
    data = pil_bytes(Image.fromarray(np.zeros((10, 20), np.uint8)))
    assert read_label_map(data, "k", max_pixels=200).values.shape == (10, 20)
    with pytest.raises(SampleError) as err:
        read_label_map(data, "k", max_pixels=199)
    assert err.value.error_type == "too_large" and "200 pixels" in err.value.message


def test_too_large_bomb_is_not_decoded():
    """A header claiming 1e10 pixels (Pillow's own bomb limit) and a 196 MP bomb under it (over the
    default max_pixels, 192 MP)."""
    data = bytearray(pil_bytes(Image.fromarray(np.zeros((4, 4), np.uint8))))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    with pytest.raises(SampleError) as err:
        read_label_map(bytes(data), "k")
    assert err.value.error_type == "too_large"
    with pytest.raises(SampleError) as err:
        read_label_map(bomb_png(14_000, 14_000), "k")
    assert err.value.error_type == "too_large" and "196000000 pixels" in err.value.message
