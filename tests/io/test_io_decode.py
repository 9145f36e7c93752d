"""Guarded decoding: orientation, pixel formats, corrupt inputs, bombs, aspect and size checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.io import (
    SampleError,
    SampleRef,
    decode_image,
    decode_mask,
    list_samples,
    load_sample,
)
from tests.helpers import (
    bomb_png,
    encode_image,
    encode_mask,
    jpeg_with_orientation,
    make_sample,
    pil_bytes,
    put,
    write_layout,
    write_prefix_layout,
)


def _quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """Four flat colours so orientation and channel order are unambiguous after JPEG."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return a


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: display turns it 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied(orientation, upright):
    stored = _quadrants()
    out = decode_image(jpeg_with_orientation(stored, orientation), key="exif")
    expected = upright(stored)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 6


def test_exif_rotated_sample_checks_mask_against_upright_size(tmp_path):
    stored = _quadrants(32, 48)  # upright is 48 x 32 (H x W) with orientation 6
    upright_mask = np.zeros((48, 32), np.uint8)
    upright_mask[:24] = 255
    ok = {
        "key": "ok",
        "image_bytes": jpeg_with_orientation(stored, 6),
        "coarse": upright_mask,
        "gt": upright_mask,
    }
    bad = {
        "key": "bad",
        "image_bytes": jpeg_with_orientation(stored, 6),
        "coarse": np.zeros((32, 48), np.uint8),
    }
    refs = {r.key: r for r in list_samples(write_prefix_layout(str(tmp_path), [ok, bad]))}
    sample = load_sample(refs["ok"])
    assert sample.image.shape == (48, 32, 3) and sample.gt.shape == (48, 32)
    with pytest.raises(SampleError) as err:
        load_sample(refs["bad"])
    assert (err.value.key, err.value.error_type) == ("bad", "aspect_mismatch")
    assert refs["bad"].mask_uri in err.value.message and refs["bad"].image_uri in err.value.message


def test_image_pixel_formats_normalise_to_rgb_uint8():
    rgb = _quadrants()
    grey = rgb[:, :, 1]
    cases = {
        "grey": (pil_bytes(Image.fromarray(grey)), np.repeat(grey[:, :, None], 3, 2)),
        "rgba": (pil_bytes(Image.fromarray(np.dstack([rgb, np.full(grey.shape, 7, np.uint8)]))), rgb),
        "la": (
            pil_bytes(Image.fromarray(np.dstack([grey, grey])).convert("LA")),
            np.repeat(grey[:, :, None], 3, 2),
        ),
        "palette": (
            pil_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)),
            rgb,
        ),
        "one_bit": (
            pil_bytes(Image.fromarray(grey > 0).convert("1")),
            np.repeat((grey > 0)[:, :, None] * 255, 3, 2),
        ),
        "cmyk_jpeg": (pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=98), rgb),
    }
    for name, (data, expected) in cases.items():
        out = decode_image(data, key=name)
        assert out.dtype == np.uint8 and out.shape == (32, 48, 3), name
        tol = 8 if "jpeg" in name else 0
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= tol * 4, name

    sixteen = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)
    out = decode_image(encode_mask(sixteen), key="16bit")
    np.testing.assert_array_equal(out, np.repeat((sixteen >> 8).astype(np.uint8)[:, :, None], 3, 2))
    ok, rgb16 = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[:, :, ::-1])  # 48-bit PNG, BGR for cv2
    np.testing.assert_array_equal(decode_image(rgb16.tobytes(), key="rgb16"), rgb)


def test_mask_pixel_formats_normalise_to_grey_uint8():
    soft = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (32, 1))  # (32, 48) ramp
    binary = (soft > 100).astype(np.uint8)
    palette_bw = Image.fromarray(binary, mode="L").convert("P")
    voc = Image.fromarray(binary * 1, mode="L").convert("P")
    voc.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # class 1 is dark red (128, 0, 0)
    cut_out = np.dstack([np.full((32, 48, 3), 255, np.uint8), soft])
    cases = {
        "grey": (encode_mask(soft), soft),
        "labels01": (encode_mask(binary), binary * 255),
        "labels01_16bit": (encode_mask(binary.astype(np.uint16)), binary * 255),
        "16bit": (encode_mask(soft.astype(np.uint16) * 257), soft),
        "one_bit": (pil_bytes(Image.fromarray(binary.astype(bool))), binary * 255),
        "palette_grey": (pil_bytes(palette_bw), binary * 255),
        "palette_voc": (pil_bytes(voc), binary * 255),
        "rgb_grey": (encode_image(np.repeat(soft[:, :, None], 3, 2), "png"), soft),
        "rgb_colour_labels": (
            encode_image(np.dstack([binary * 200, binary * 0, binary * 30]), "png"),
            binary * 255,
        ),
        "rgba_cut_out": (pil_bytes(Image.fromarray(cut_out, "RGBA")), soft),
        "rgba_opaque": (
            pil_bytes(Image.fromarray(np.dstack([soft, soft, soft, np.full_like(soft, 255)]))),
            soft,
        ),
        "float_tiff": (pil_bytes(Image.fromarray(soft.astype(np.float32) / 255.0), "TIFF"), soft),
    }
    for name, (data, expected) in cases.items():
        out = decode_mask(data, key=name)
        assert out.dtype == np.uint8 and out.shape == (32, 48), name
        np.testing.assert_array_equal(out, expected, err_msg=name)


def _error(data: bytes, kind: str = "image", **kw) -> SampleError:
    fn = decode_image if kind == "image" else decode_mask
    with pytest.raises(SampleError) as err:
        fn(data, key="the-key", **kw)
    assert err.value.key == "the-key"
    return err.value


def test_corrupt_bytes_are_decode_errors():
    jpg = encode_image(_quadrants(), "jpg")
    png = encode_image(_quadrants(), "png")
    assert _error(jpg[: len(jpg) // 2]).error_type == "decode_error"
    assert _error(png[: len(png) - 30]).error_type == "decode_error"
    assert _error(b"hello, I am a text file").error_type == "decode_error"
    assert _error(b"").error_type == "decode_error" and "empty file (0 bytes)" in _error(b"").message
    text = _error(b"hello, I am a text file").message
    assert "BytesIO" not in text and "23 bytes" in text, text
    assert _error(png[:40], kind="mask").error_type == "decode_error"


def test_decompression_bomb_rejected_from_header_before_decoding(monkeypatch):
    def no_decode(self):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    big = bomb_png(20000, 20000)  # 400 MP: above Pillow's hard limit too (2 x max_pixels)
    assert len(big) < 200_000
    err = _error(big)
    assert err.error_type == "too_large"
    assert "400000000 pixels, over max_pixels=" in err.message and "178956970" not in err.message, err.message
    medium = bomb_png(12000, 9000)  # 108 MP: under Pillow's limit, over ours
    assert _error(medium, kind="mask", max_pixels=100_000_000).error_type == "too_large"
    over = _error(bomb_png(14000, 14000))  # 196 MP: over the default (192 MP), under 2 x it
    assert over.error_type == "too_large" and "14000x14000 = 196000000 pixels exceeds max_pixels=192000000" \
        in over.message, over.message
    assert "max_pixels" in _error(encode_image(_quadrants(), "png"), max_pixels=1000).message


def test_the_default_admits_16000x12000_past_pillows_own_limit(monkeypatch):
    """Pillow refuses a header over 2 x Image.MAX_IMAGE_PIXELS (~179 MP by default) before any
    guard of ours: input.max_pixels (default 192 MP = 16000x12000) raises that limit to itself."""
    from pipeline.config.schema import InputConfig
    from pipeline.io.decode import DEFAULT_MAX_PIXELS, open_checked

    assert InputConfig(uri="/x").max_pixels == DEFAULT_MAX_PIXELS == 16000 * 12000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default
    im = open_checked(bomb_png(16000, 12000), "k", "image", DEFAULT_MAX_PIXELS)  # header only
    assert im.size == (16000, 12000) and Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    open_checked(bomb_png(100, 100), "k", "image", 20_000)  # a smaller ask never lowers it
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("layout", ["prefix", "webdataset", "list"])
def test_load_sample_corrupt_inputs_become_typed_errors(storage_root, layout):
    base = make_sample("x", 40, 60)
    png = encode_image(base["image"], "png")
    cases = {
        "truncated_image": ({"image_bytes": png[:200]}, "decode_error"),
        "text_mask": ({"mask_bytes": b"not a png"}, "decode_error"),
        "bomb_mask": ({"mask_bytes": bomb_png(15000, 13000)}, "too_large"),
        "wrong_aspect": ({"coarse": np.zeros((40, 40), np.uint8)}, "aspect_mismatch"),
        "small_gt": ({"gt": np.zeros((20, 30), np.uint8)}, "gt_size_mismatch"),
        "no_mask": ({"mask": False}, "missing_mask"),
        "no_image": ({"image": False}, "missing_image"),
    }
    samples = []
    for key, (override, _) in cases.items():
        s = dict(base, key=key)
        s.update(override)
        samples.append(s)
    samples.append(dict(base, key="fine"))
    uri = write_layout(layout, storage_root, samples, image_ext="png", per_shard=3)
    refs = {r.key: r for r in list_samples(uri, layout=layout)}
    assert sorted(refs) == sorted([*cases, "fine"])
    for key, (_, kind) in cases.items():
        with pytest.raises(SampleError) as err:
            load_sample(refs[key])
        assert (err.value.key, err.value.error_type) == (key, kind), err.value
        assert key in str(err.value)
        assert "BytesIO" not in err.value.message
        if kind in ("decode_error", "too_large"):  # the message names the file that failed
            role = "image" if "image" in key else "mask"
            assert repr(getattr(refs[key], f"{role}_uri")) in err.value.message, err.value.message
    np.testing.assert_array_equal(load_sample(refs["fine"]).image, base["image"])


def test_bad_keys_and_short_reads_are_errors(tmp_path):
    put(str(tmp_path / "i.png"), encode_image(_quadrants(), "png"))
    ref = SampleRef("", str(tmp_path / "i.png"), str(tmp_path / "i.png"))
    with pytest.raises(SampleError) as err:
        load_sample(ref)
    assert err.value.error_type == "bad_key"
    short = SampleRef(
        "k", "t#k.png", "t#k.seg.png", shard=str(tmp_path / "i.png"), image_offset=0, image_length=10**7
    )
    with pytest.raises(SampleError) as err:
        load_sample(short)
    assert err.value.error_type == "decode_error" and "bytes" in err.value.message


def test_coarse_masks_upsample_bilinearly_within_aspect_tolerance(tmp_path):
    image = make_sample("a", 300, 400)["image"]
    coarse = (np.random.default_rng(1).random((75, 100)) * 255).astype(np.uint8)
    near = (np.random.default_rng(2).random((76, 100)) * 255).astype(np.uint8)  # 1.3% off: accepted
    big = np.zeros((600, 800), np.uint8)
    big[:, 400:] = 255
    samples = [
        {"key": "quarter", "image": image, "coarse": coarse, "gt": None},
        {"key": "near", "image": image, "coarse": near, "gt": None},
        {"key": "larger", "image": image, "coarse": big, "gt": None},
        {"key": "far", "image": image, "coarse": np.zeros((80, 100), np.uint8), "gt": None},  # 6.7% off
    ]
    refs = {r.key: r for r in list_samples(write_prefix_layout(str(tmp_path), samples, image_ext="png"))}
    s = load_sample(refs["quarter"])
    assert s.coarse_size == (75, 100) and s.gt is None
    np.testing.assert_array_equal(s.coarse, cv2.resize(coarse, (400, 300), interpolation=cv2.INTER_LINEAR))
    assert load_sample(refs["near"]).coarse.shape == (300, 400)
    down = load_sample(refs["larger"]).coarse
    assert down.shape == (300, 400) and down[:, :199].max() == 0 and down[:, 201:].min() == 255
    with pytest.raises(SampleError) as err:
        load_sample(refs["far"])
    assert err.value.error_type == "aspect_mismatch"
    assert load_sample(refs["far"], aspect_tolerance=0.1).coarse.shape == (300, 400)


def test_sample_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(SampleError("k", "too_large", "big")))
    assert (err.key, err.error_type, err.message) == ("k", "too_large", "big")
    with pytest.raises(ValueError, match="unknown error_type"):
        SampleError("k", "oops", "m")
