"""Label Studio's brush RLE: a hand-packed stream of the documented format, round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.review.brush_rle import (
    BrushRleError,
    BrushSizeError,
    decode_mask,
    decode_values,
    encode_mask,
    encode_values,
)


def _pack(bits: str) -> list[int]:
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


HEADER_4 = f"{4:032b}" + f"{7:05b}" + "0010" + "0011" + "0111" + "1111"  # n=4, 8-bit words, widths 3,4,8,16


def test_one_pixel_matches_the_documented_bit_layout():
    # one repeat chunk: flag 1, width index 0 (3 bits), length - 1 = 3, value 255
    assert encode_values(np.full(4, 255, np.uint8)) == _pack(HEADER_4 + "1" + "00" + "011" + "11111111")
    assert encode_mask(np.ones((1, 1), bool)) == _pack(HEADER_4 + "1" + "00" + "011" + "11111111")


def test_literal_chunks_and_other_widths_decode():
    # a literal chunk of 3 values then a repeat chunk of 1, as Label Studio's front end may write
    bits = (HEADER_4 + "0" + "00" + "010" + "00000001" + "00000010" + "00000011"
            + "1" + "01" + "0000" + "11111111")
    assert decode_values(_pack(bits)).tolist() == [1, 2, 3, 255]
    # 5-bit words and custom run widths (2, 2, 2, 2)
    bits = f"{3:032b}" + f"{4:05b}" + "0001" * 4 + "1" + "11" + "10" + "10101"
    assert decode_values(_pack(bits)).tolist() == [21, 21, 21]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (300, 400)])
def test_round_trip(shape):
    rng = np.random.default_rng(shape[0])
    blobs = rng.random(shape) > 0.6
    for mask in (blobs, np.zeros(shape, bool), np.ones(shape, bool), np.indices(shape).sum(0) % 2 == 1):
        rle = encode_mask(mask)
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
        out = decode_mask(rle, *shape)
        assert out.dtype == bool and np.array_equal(out, mask)


def test_runs_longer_than_the_widest_field_are_split():
    mask = np.ones((300, 400), bool)  # 480000 values of 255: eight chunks of <= 65536
    values = decode_values(encode_mask(mask))
    assert values.size == 480000 and (values == 255).all()
    assert len(encode_mask(mask)) == (53 + 8 * (1 + 2 + 16 + 8) + 7) // 8  # header + 8 chunks


def test_alpha_decides():
    values = np.zeros((2, 2, 4), np.uint8)
    values[0, 0] = (255, 255, 255, 127)  # opaque colour, alpha under half: out
    values[1, 1] = (0, 0, 0, 128)
    assert decode_mask(encode_values(values.ravel()), 2, 2).tolist() == [[False, False], [False, True]]


def test_errors():
    rle = encode_mask(np.ones((4, 6), bool))
    with pytest.raises(BrushSizeError, match="24 RGBA pixels, not 5x4"):
        decode_mask(rle, 4, 5)
    with pytest.raises(BrushRleError, match="truncated"):
        decode_values(rle[:-2])
    with pytest.raises(BrushRleError, match="bytes"):
        decode_values([300] * 9)
    with pytest.raises(BrushRleError, match="header"):
        decode_values([1, 2])
    # a run past the header's count
    with pytest.raises(BrushRleError, match="past the 4 values"):
        decode_values(_pack(HEADER_4 + "1" + "00" + "111" + "11111111"))
