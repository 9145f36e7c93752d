"""A 16000x12000 image (192 MP, the default input.max_pixels) through the refine pipeline's stages
(issue 32): decode (JPEG) -> coarse-mask upsample (1/8 -> full size) -> refine with the shipped
light CRM (one 1/8 scale, encoder tiled, strided decoding) -> binary + soft masks -> metrics
against a 192 MP truth -> PNG writes -> the manifest row. The stage functions are what the Ray
pipeline runs (``pipeline.stages``); called in-process here so that the test's memory is one
copy of each buffer (measured: `samsr benchmark memory --stages` for the per-stage peaks)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.bench.path_memory import synthetic_photo
from pipeline.io import list_samples
from pipeline.io.decode import DEFAULT_MAX_PIXELS
from pipeline.refine.loaded import LoadedRefiner
from pipeline.stages import decode_batch, finish_batch, refine_batch

WEIGHTS = Path(__file__).resolve().parents[2] / "pipeline" / "weights" / "crm_mnv2.pt"
W, H = 16000, 12000


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """A 16000x12000 JPEG photo with an object, its coarse mask at 1/8 (a low-resolution
    annotation) and its truth at full size, in the prefix layout."""
    root = tmp_path_factory.mktemp("big")
    image, truth = synthetic_photo(W, H, seed=3)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    del image
    (root / "big_im.jpg").write_bytes(jpeg.tobytes())
    coarse = cv2.resize(truth, (W // 8, H // 8), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "big_seg.png"), coarse)
    cv2.imwrite(str(root / "big_gt.png"), truth)
    return root, truth


def test_a_16000x12000_image_goes_through_the_pipeline(big_input, tmp_path):
    root, truth = big_input
    assert W * H == DEFAULT_MAX_PIXELS  # the default admits it (Pillow's own limit would not)
    refs = list_samples(str(root), "prefix", gt_suffix="_gt.png")
    assert [r.key for r in refs] == ["big"]
    batch = {"meta": np.asarray([json.dumps({"key": "big", "ref": refs[0].to_dict(), "attempt": 1})],
                                dtype=object)}
    decoded = decode_batch(batch, max_pixels=DEFAULT_MAX_PIXELS)
    meta = json.loads(decoded["meta"][0])
    assert meta.get("status") != "error", meta
    assert decoded["image"][0].shape == (H, W, 3) and decoded["coarse"][0].shape == (H, W)
    assert (meta["coarse_width"], meta["coarse_height"]) == (W // 8, H // 8)

    options = dict(scales=(0.125,), align=8, tile_encoder=1024, decode="strided", stride=16, tile=2048)
    refiner = LoadedRefiner("crm_mnv2", str(WEIGHTS), options, "cpu", threads=2)
    refined = refine_batch(decoded, refine_fn=refiner, soft=True)
    del decoded
    meta = json.loads(refined["meta"][0])
    assert meta.get("status") != "error", meta
    mask = refined["refined"][0]
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert refined["soft"][0].shape == (H, W)
    # sane: the shipped refiner keeps the object (it changes the coarse mask only near its line)
    inter = np.count_nonzero((mask > 0) & (truth > 0))
    assert inter / np.count_nonzero((mask > 0) | (truth > 0)) > 0.97

    out = tmp_path / "out"
    rows = finish_batch(refined, output_prefix=str(out), static={"method": "crm"})
    row = json.loads(rows["row"][0])
    assert row["status"] == "ok", row
    assert (row["width"], row["height"]) == (W, H)
    assert row["iou_refined"] > 0.97 and row["iou_coarse"] > 0.97
    assert row["mba_refined"] is not None and row["biou_refined"] is not None
    assert 0 < row["changed_fraction"] < 0.05
    written = cv2.imread(row["output_uri"], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, mask)
    assert cv2.imread(row["soft_output_uri"], cv2.IMREAD_UNCHANGED).shape == (H, W)


def test_the_report_reads_a_16000x12000_jpeg_at_thumbnail_size(big_input, monkeypatch):
    """The report's overlays decode the input JPEG at 1/8 (Pillow's draft), past Pillow's own
    pixel limit (89 MP by default, an error over 179 MP) that a 192 MP input exceeds."""
    from PIL import Image

    from pipeline.report.overlay import _open_image

    root, _ = big_input
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default
    thumb = _open_image((root / "big_im.jpg").read_bytes(), 1024)
    assert thumb.size == (W // 8, H // 8) and thumb.mode == "RGB"
