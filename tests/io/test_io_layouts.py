"""Input layouts on local files, memory:// and a real S3 endpoint (moto)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from pipeline.io import (
    SampleError,
    SampleRef,
    expand_braces,
    iter_tar_members,
    list_samples,
    list_shards,
    load_sample,
    open_fs,
    read_bytes,
    safe_key,
)
from tests.helpers import (
    encode_image,
    encode_mask,
    make_sample,
    make_samples,
    put,
    write_layout,
    write_list_layout,
    write_prefix_layout,
    write_webdataset,
)

LAYOUTS = ["prefix", "webdataset", "list", "list-parquet"]


def _layout_arg(layout: str) -> str:
    return "list" if layout.startswith("list") else layout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_lists_and_loads_on_every_storage(storage_root, layout):
    samples = make_samples(5, 40, 60, coarse_size=(20, 30))
    samples = [samples[i] for i in (3, 0, 4, 1, 2)]  # written out of order
    uri = write_layout(layout, storage_root, samples, image_ext="png")
    refs = list_samples(uri, layout=_layout_arg(layout))
    assert [r.key for r in refs] == ["s000", "s001", "s002", "s003", "s004"]
    assert all(r.problem is None for r in refs)
    by_key = {s["key"]: s for s in samples}
    for ref in refs:
        sample = load_sample(ref)
        src = by_key[ref.key]
        assert sample.image.dtype == np.uint8 and sample.image.shape == (40, 60, 3)
        np.testing.assert_array_equal(sample.image, src["image"])  # PNG: lossless
        np.testing.assert_array_equal(sample.gt, src["gt"])
        assert sample.coarse.shape == (40, 60) and sample.coarse_size == (20, 30)
        assert (sample.width, sample.height) == (60, 40)
    # deterministic: a second listing is identical
    assert list_samples(uri, layout=_layout_arg(layout)) == refs


def test_prefix_layout_big_names_jpeg_and_custom_suffixes(tmp_path):
    samples = make_samples(2)
    root = write_prefix_layout(str(tmp_path / "big"), samples, image_ext="jpeg")
    put(str(tmp_path / "big" / "README.txt"), b"not a sample")
    refs = list_samples(root)
    assert [r.key for r in refs] == ["s000", "s001"]
    assert refs[0].image_uri.endswith("s000_im.jpeg") and refs[0].gt_uri.endswith("s000_gt.png")

    custom = write_prefix_layout(
        str(tmp_path / "custom"),
        samples,
        image_suffix="-rgb",
        mask_suffix="-lowres.png",
        gt_suffix="-label.png",
    )
    refs = list_samples(custom, image_suffix="-rgb.jpg", mask_suffix="-lowres.png", gt_suffix="-label.png")
    assert [r.key for r in refs] == ["s000", "s001"] and all(r.problem is None for r in refs)
    no_gt = list_samples(custom, image_suffix="-rgb.jpg", mask_suffix="-lowres.png", gt_suffix="")
    assert all(r.gt_uri is None for r in no_gt)


def test_prefix_layout_subfolders_become_escaped_keys(tmp_path):
    write_prefix_layout(str(tmp_path / "d" / "cats"), [make_sample("a")])
    write_prefix_layout(str(tmp_path / "d" / "dogs"), [make_sample("a")])
    refs = list_samples(str(tmp_path / "d"))
    assert [r.key for r in refs] == ["cats/a", "dogs/a"]
    assert refs[0].shard == str(tmp_path / "d" / "cats")
    assert load_sample(refs[1]).key == "dogs/a"


def test_prefix_layout_reports_missing_mask_missing_image_and_duplicates(tmp_path):
    root = str(tmp_path / "data")
    good, no_mask, orphan, dup = make_samples(4)
    no_mask["mask"] = False
    orphan["image"] = False
    write_prefix_layout(root, [good, no_mask, orphan, dup])
    put(f"{root}/{dup['key']}_im.png", encode_image(dup["image"], "png"))  # second image for one key
    refs = {r.key: r for r in list_samples(root)}
    assert refs["s000"].problem is None
    assert refs["s001"].problem == "missing_mask" and refs["s001"].mask_uri is None
    assert refs["s002"].problem == "missing_image"
    assert refs["s003"].problem == "duplicate_key" and "s003_im.png" in refs["s003"].problem_message
    for key, kind in [("s001", "missing_mask"), ("s002", "missing_image"), ("s003", "duplicate_key")]:
        with pytest.raises(SampleError) as err:
            load_sample(refs[key])
        assert err.value.key == key and err.value.error_type == kind


def test_prefix_layout_empty_or_missing_prefix_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="no samples found"):
        list_samples(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="unknown layout"):
        list_samples(str(tmp_path), layout="coco-ish")


def test_escaped_key_collisions_are_duplicates(tmp_path):
    root = str(tmp_path / "l")
    rows = [
        {"key": "a/b", "image_uri": "x_im.png", "mask_uri": "x_seg.png"},
        {"key": "a_x2Fb", "image_uri": "x_im.png", "mask_uri": "x_seg.png"},
        {"key": "../evil", "image_uri": "x_im.png", "mask_uri": "x_seg.png"},
        {"key": "ok", "image_uri": "x_im.png", "mask_uri": "x_seg.png"},
    ]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    put(f"{root}/list.csv", text.getvalue().encode())
    refs = {r.key: r for r in list_samples(f"{root}/list.csv", layout="list")}
    assert refs["a/b"].problem == refs["a_x2Fb"].problem == "duplicate_key"
    assert refs["../evil"].problem is None and safe_key("../evil") == "_x2E._x2Fevil"
    assert refs["ok"].problem is None


def test_list_layout_resolution_absolute_and_missing_objects(tmp_path):
    samples = make_samples(2)
    uri = write_list_layout(str(tmp_path / "rel"), samples, relative=True)
    refs = list_samples(uri, layout="list")
    assert refs[0].image_uri == str(tmp_path / "rel" / "files" / "s000_im.jpg")
    uri_abs = write_list_layout(str(tmp_path / "abs"), samples, relative=False, fmt="parquet")
    assert list_samples(uri_abs, layout="auto")[1].mask_uri == str(
        tmp_path / "abs" / "files" / "s001_seg.png"
    )

    # a list pointing at objects that do not exist, or with an empty mask cell
    root = tmp_path / "broken"
    put(str(root / "img.png"), encode_image(samples[0]["image"], "png"))
    put(
        str(root / "list.csv"),
        b"key,image_uri,mask_uri,gt_uri\n"
        b"gone_mask,img.png,nowhere.png,\n"
        b"gone_image,nowhere.jpg,img.png,\n"
        b"gone_gt,img.png,../broken/img.png,nowhere_gt.png\n"
        b"empty_mask,img.png,,\n",
    )
    refs = {r.key: r for r in list_samples(str(root / "list.csv"), layout="list")}
    assert refs["gone_gt"].mask_uri == str(root / "img.png")  # ../ normalised
    expected = {
        "gone_mask": "missing_mask",
        "gone_image": "missing_image",
        "gone_gt": "missing_gt",
        "empty_mask": "missing_mask",
    }
    for key, kind in expected.items():
        with pytest.raises(SampleError) as err:
            load_sample(refs[key])
        assert (err.value.key, err.value.error_type) == (key, kind)
    with pytest.raises(ValueError, match="missing column 'mask_uri'"):
        put(str(root / "bad.csv"), b"key,image_uri\na,img.png\n")
        list_samples(str(root / "bad.csv"), layout="list")


def test_a_missing_bucket_is_named(s3_bucket):
    missing = "s3://samsr-no-such-bucket-" + s3_bucket.rsplit("-", 1)[-1][-8:].lower()
    with pytest.raises(ValueError, match="bucket 'samsr-no-such-bucket-.*' of .* does not exist"):
        list_samples(f"{missing}/data", layout="prefix")
    with pytest.raises(ValueError, match="no samples found"):  # the bucket exists, the data does not
        list_samples(f"{s3_bucket}/nothing-here", layout="prefix")


def test_list_layout_relative_uris_on_s3(s3_bucket):
    samples = make_samples(2)
    uri = write_list_layout(f"{s3_bucket}/lists", samples, relative=True)
    refs = list_samples(uri, layout="list")
    assert refs[0].image_uri == f"{s3_bucket}/lists/files/s000_im.jpg"
    assert load_sample(refs[1]).image.shape == (48, 64, 3)


def test_webdataset_members_byte_ranges_and_duplicates(memory_root):
    a, b, c = make_samples(3)
    shard0 = write_webdataset(f"{memory_root}/s/shard-000000.tar", [a, b], image_ext="png")
    write_webdataset(f"{memory_root}/s/shard-000001.tar", [c, b], image_ext="png")  # b again
    members = iter_tar_members(shard0)
    assert [m[0] for m in members] == [
        "s000.png",
        "s000.seg.png",
        "s000.gt.png",
        "s001.png",
        "s001.seg.png",
        "s001.gt.png",
    ]
    name, offset, size = members[1]
    assert read_bytes(shard0, offset, size) == encode_mask(a["coarse"])
    refs = {
        r.key: r for r in list_samples(f"{memory_root}/s/shard-{{000000..000001}}.tar", layout="webdataset")
    }
    assert sorted(refs) == ["s000", "s001", "s002"]
    assert refs["s001"].problem == "duplicate_key"
    assert refs["s000"].image_uri == f"{shard0}#s000.png" and refs["s000"].shard == shard0
    assert (refs["s000"].mask_offset, refs["s000"].mask_length) == (offset, size)
    assert refs["s002"].shard.endswith("shard-000001.tar")


def test_webdataset_long_names_pax_and_dot_slash(tmp_path):
    key = "dir/" + "k" * 120  # longer than ustar's 100-byte name field: needs a pax header
    s = make_sample(key)
    uri = write_webdataset(str(tmp_path / "long.tar"), [s])
    refs = list_samples(uri, layout="webdataset")
    assert [r.key for r in refs] == [key]
    np.testing.assert_array_equal(load_sample(refs[0]).gt, s["gt"])


def test_webdataset_shard_discovery_and_corruption(tmp_path):
    assert expand_braces("x/s-{08..10}.tar") == ["x/s-08.tar", "x/s-09.tar", "x/s-10.tar"]
    folder = tmp_path / "shards"
    for i in range(3):
        write_webdataset(str(folder / f"shard-{i}.tar"), [make_sample(f"k{i}")])
    put(str(folder / "notes.txt"), b"x")
    assert [u.rsplit("/", 1)[1] for u in list_shards(str(folder))] == [
        "shard-0.tar",
        "shard-1.tar",
        "shard-2.tar",
    ]
    assert len(list_shards(str(folder / "*.tar"))) == 3
    with pytest.raises(ValueError, match="compressed"):
        list_shards(str(folder / "x.tar.gz"))
    with pytest.raises(ValueError, match="no WebDataset shards"):
        list_shards(str(tmp_path / "empty"))
    # a truncated shard: strict raises naming the shard, lenient keeps what was readable
    two = tmp_path / "two.tar"
    write_webdataset(str(two), [make_sample("a"), make_sample("b")])
    b_image_offset = iter_tar_members(str(two))[3][1]
    put(str(tmp_path / "cut.tar"), two.read_bytes()[: b_image_offset + 10])
    with pytest.raises(ValueError, match="cut.tar"):
        list_samples(str(tmp_path / "cut.tar"), layout="webdataset")
    lenient = list_samples(str(tmp_path / "cut.tar"), layout="webdataset", strict=False)
    assert [(r.key, r.problem) for r in lenient] == [("a", None)]
    put(str(tmp_path / "junk.tar"), b"\x1f\x8b" + b"\x00" * 2000)
    with pytest.raises(ValueError, match="gzip"):
        list_samples(str(tmp_path / "junk.tar"), layout="webdataset")


def test_webdataset_on_s3_reads_headers_and_member_ranges_only(s3_bucket, monkeypatch):
    """Listing and loading fetch a small part of a shard that holds a large unrelated member."""
    import s3fs

    samples = make_samples(2)
    samples[0]["image_bytes"] = encode_image(samples[0]["image"], "jpg")
    padding = {"key": "zz_padding", "image": False, "mask": False, "gt": None}
    padding["mask_bytes"] = np.random.default_rng(0).bytes(4_000_000)  # not a valid PNG; never read
    uri = write_webdataset(f"{s3_bucket}/wds/shard-000000.tar", [samples[0], padding, samples[1]])

    fetched: list[tuple[int, int]] = []
    real_fetch = s3fs.core.S3File._fetch_range

    def spy_fetch(self, start, end):
        fetched.append((start, end))
        return real_fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", spy_fetch)
    refs = {r.key: r for r in list_samples(uri, layout="webdataset")}
    assert 0 < sum(e - s for s, e in fetched) < 1_000_000, fetched
    assert refs["zz_padding"].problem == "missing_image"

    fs, _ = open_fs(uri)  # the cached S3FileSystem instance load_sample will use
    real_cat = fs.cat_file
    ranges: list[tuple[int | None, int | None]] = []

    def spy_cat(path, start=None, end=None, **kwargs):
        ranges.append((start, end))
        return real_cat(path, start=start, end=end, **kwargs)

    monkeypatch.setattr(fs, "cat_file", spy_cat)
    ref = refs["s001"]
    sample = load_sample(ref)
    assert sorted(ranges) == sorted(
        (o, o + n)
        for o, n in [
            (ref.image_offset, ref.image_length),
            (ref.mask_offset, ref.mask_length),
            (ref.gt_offset, ref.gt_length),
        ]
    )
    np.testing.assert_array_equal(sample.gt, samples[1]["gt"])


def test_sample_ref_round_trips_through_plain_rows():
    ref = SampleRef("k", "s.tar#k.jpg", "s.tar#k.seg.png", shard="s.tar", image_offset=512, image_length=10)
    row = ref.to_dict()
    row["mask_offset"] = float("nan")  # what a columnar round trip makes of None
    row["image_offset"] = np.int64(512)
    back = SampleRef.from_dict(row)
    assert back == ref and isinstance(back.image_offset, int)
    assert back.source("image") == ("s.tar", 512, 10)
    assert back.source("mask") == ("s.tar#k.seg.png", None, None)
