"""Key escaping, mask writing and the Parquet manifest, on local, memory:// and S3."""

from __future__ import annotations

import datetime as dt
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.io import (
    MANIFEST_SCHEMA,
    SampleError,
    completed_keys,
    latest_rows,
    mask_uri,
    open_fs,
    read_bytes,
    read_manifest,
    safe_key,
    write_manifest_part,
    write_mask,
)
from tests.helpers import put


@pytest.mark.parametrize(
    "key, expected",
    [
        ("img_0001", "img_0001"),
        ("a.b-c_D9", "a.b-c_D9"),
        ("a/b", "a_x2Fb"),
        ("/etc/passwd", "_x2Fetc_x2Fpasswd"),
        ("x/../../y", "x_x2F.._x2F.._x2Fy"),
        ("c:\\win", "c_x3A_x5Cwin"),
        ("caf\u00e9 1", "caf_xC3_xA9_x201"),
        ("a\x00b", "a_x00b"),
    ],
)
def test_safe_key_escapes_deterministically(key, expected):
    assert safe_key(key) == expected
    assert "/" not in expected and not expected.startswith(".")


@pytest.mark.parametrize("key, expected", [
    (".", "_x2E"), ("..", "_x2E."), (".hidden", "_x2Ehidden"), ("./x", "_x2E_x2Fx"),
    ("..%2F..%2Fescape", "_x2E._x252F.._x252Fescape")])
def test_safe_key_escapes_a_leading_dot(key, expected):
    """Legal file names that start with a dot are escaped, never hidden or parent directories."""
    assert safe_key(key) == expected


def test_safe_key_rejects_empty_and_non_strings():
    for key in ("", 7):
        with pytest.raises(SampleError) as err:
            safe_key(key)
        assert err.value.error_type == "bad_key" and err.value.key == str(key)
        assert repr(key) in err.value.message, "the message repeats the key"


def test_safe_key_long_keys_are_shortened_with_a_hash():
    a, b = "k" * 300, "k" * 299 + "j"
    assert len(safe_key(a)) == 200 and safe_key(a) != safe_key(b)
    assert safe_key(a) == safe_key("k" * 300)


def _png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(read_bytes(uri))))


def test_write_mask_binary_soft_idempotent(storage_root):
    prob = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    uri = write_mask(storage_root + "/out/", "dir/img 1", prob, soft=True)
    assert (
        uri == f"{storage_root}/out/masks/dir_x2Fimg_x201.png" == mask_uri(storage_root + "/out", "dir/img 1")
    )
    binary = _png(uri)
    assert binary.dtype == np.uint8 and binary.shape == (24, 32)
    np.testing.assert_array_equal(binary, np.where(prob * 255 > 128, 255, 0))
    soft = _png(mask_uri(storage_root + "/out", "dir/img 1", "soft"))
    np.testing.assert_array_equal(soft, np.rint(prob * 255).astype(np.uint8))
    first = read_bytes(uri)
    assert write_mask(storage_root + "/out", "dir/img 1", prob) == uri  # a retry overwrites
    assert read_bytes(uri) == first
    u8 = np.array([[0, 128, 129, 255]], np.uint8)
    np.testing.assert_array_equal(_png(write_mask(storage_root, "u8", u8)), [[0, 0, 255, 255]])
    np.testing.assert_array_equal(_png(write_mask(storage_root, "b", u8 > 200)), [[0, 0, 0, 255]])
    with pytest.raises(SampleError):
        write_mask(storage_root, "", u8)
    with pytest.raises(ValueError, match="shape"):
        write_mask(storage_root, "rgb", np.zeros((2, 2, 3), np.uint8))


def test_local_writes_leave_no_temporary_files(tmp_path):
    for _ in range(2):
        write_mask(str(tmp_path), "k", np.ones((4, 4), np.uint8) * 255)
    assert sorted(os.listdir(tmp_path / "masks")) == ["k.png"]


def _row(key: str, status: str = "ok", **extra) -> dict:
    row = {"job_id": "job1", "run_id": "r1", "attempt": 1, "key": key, "status": status}
    if status == "error":
        row.update(error_type="decode_error", error_message=f"{key}: truncated")
    row.update(extra)
    return row


def test_manifest_round_trip_and_completed_keys(storage_root):
    out = storage_root + "/job"
    assert read_manifest(out).schema == MANIFEST_SCHEMA and read_manifest(out).num_rows == 0
    assert completed_keys(out) == set()
    t = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
    rows = [
        _row(
            "a",
            width=np.int64(60),
            height=40,
            iou_coarse=np.float32(0.5),
            iou_refined=0.75,
            mba_refined=float("nan"),
            null_reason="empty_band",
            intersection_refined=3 * 10**9,
            t_read_ms=1.5,
            finished_at=t,
            output_uri=mask_uri(out, "a"),
        ),
        _row("b", status="error"),
        _row("c", status="skipped"),
    ]
    uri = write_manifest_part(rows, out, "00000-r1")
    assert uri == f"{out}/manifest/part-00000-r1.parquet"
    write_manifest_part([_row("b", attempt=2)], out, "00001-r2")
    table = read_manifest(out)
    assert table.schema == MANIFEST_SCHEMA and table.num_rows == 4
    first = table.to_pylist()[0]
    assert first["width"] == 60 and first["iou_coarse"] == 0.5 and first["mba_refined"] is None
    assert first["intersection_refined"] == 3 * 10**9 and first["finished_at"] == t
    assert first["gt_uri"] is None and first["output_uri"].endswith("/masks/a.png")
    assert table.to_pylist()[1]["finished_at"] is not None  # filled with now()
    assert completed_keys(out) == {"a", "b"}
    latest = {r["key"]: r for r in latest_rows(table).to_pylist()}
    assert latest["b"]["status"] == "ok" and latest["b"]["attempt"] == 2 and len(latest) == 3
    # a retry rewrites the same part: no duplicate rows
    write_manifest_part([_row("b", attempt=2)], out, "00001-r2")
    assert read_manifest(out).num_rows == 4
    sub = read_manifest(out, columns=["status", "key"])
    assert sub.column_names == ["key", "status"]


@pytest.mark.parametrize(
    "row, match",
    [
        (dict(_row("a"), colour="blue"), "unknown field"),
        ({"job_id": "j", "status": "ok"}, "required field 'key'"),
        (_row("a", status="done"), "status must be one of"),
        ({"job_id": "j", "key": "a", "status": "error"}, "needs an error_type"),
        (_row("a", width="wide"), "field 'width'"),
        (_row("a", width=1.5), "field 'width'"),
    ],
)
def test_manifest_rows_are_validated(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        write_manifest_part([row], str(tmp_path), "p0")
    assert not (tmp_path / "manifest").exists()


def test_manifest_bad_part_names_and_old_parts(tmp_path):
    for bad in ["", "../x", ".hidden", "a/b"]:
        with pytest.raises(ValueError, match="part_name"):
            write_manifest_part([_row("a")], str(tmp_path), bad)
    old = pa.table({"job_id": ["j"], "key": ["old"], "status": ["ok"], "retired_column": [1]})
    buf = io.BytesIO()
    pq.write_table(old, buf)
    put(str(tmp_path / "manifest" / "part-old.parquet"), buf.getvalue())
    put(str(tmp_path / "manifest" / "notes.txt"), b"ignored")
    table = read_manifest(str(tmp_path))
    assert table.schema == MANIFEST_SCHEMA and table.column("key").to_pylist() == ["old"]
    assert table.column("width").to_pylist() == [None]


def test_manifest_visible_across_clients_on_s3(s3_bucket):
    """Parts written by another client (e.g. a worker) are seen without stale listings."""
    import s3fs

    out = f"{s3_bucket}/run"
    assert completed_keys(out) == set()
    other = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([_row("z")], schema=MANIFEST_SCHEMA), buf)
    other.pipe_file(f"{out}/manifest/part-w1.parquet"[5:], buf.getvalue())
    assert completed_keys(out) == {"z"}
    fs, path = open_fs(out)
    assert fs.exists(path + "/manifest/part-w1.parquet")


def test_input_fields_describe_ok_and_error_rows(tmp_path):
    from pipeline.io import input_fields, list_samples, load_sample
    from tests.helpers import make_sample, write_prefix_layout

    ref = list_samples(write_prefix_layout(str(tmp_path), [make_sample("a", 40, 60, coarse_size=(20, 30))]))[
        0
    ]
    fields = input_fields(ref, load_sample(ref))
    assert fields["key"] == "a" and fields["image_uri"].endswith("a_im.jpg")
    assert (fields["width"], fields["height"], fields["coarse_width"], fields["coarse_height"]) == (
        60,
        40,
        30,
        20,
    )
    assert "width" not in input_fields(ref)
    write_manifest_part([dict(_row("a"), **fields)], str(tmp_path / "out"), "p")
    assert read_manifest(str(tmp_path / "out")).column("coarse_width").to_pylist() == [30]
