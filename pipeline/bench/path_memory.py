"""Peak memory of each stage of one sample's path at a large size (issue 32: "the rest of the path
scales too"), in one process, stage after stage as the pipeline runs them:

    samsr benchmark memory --stages                      # 16000x12000
    samsr benchmark memory --stages --size 8k --threads 2

Inputs (made first, not measured): a synthetic photo-like image (flat regions with an object, a
blocky upscale of a small random picture) encoded as JPEG, its ground truth as PNG, and a coarse
mask PNG at 1/8 size. Stages, each fed with what the previous ones left (the live set of a real
run): decode the image, decode + upsample the coarse mask, decode the truth, refine (``crm_mnv2``,
random weights; fast settings: one scale of 1/8, strided decoding with stride 16, the encoder
tiled at 512 px: the refiner's full-size buffers, not its encoder, which ``samsr benchmark
memory`` measures), edge check, trust features, per-change acceptance (``refine.accept: regions``
with the shipped models; its output, like a real run's, is held beside the refined probabilities,
which go to ``candidates/``), binary + soft masks, metrics (IoU, mBA, BIoU of
coarse and refined against the truth, change metrics), PNG encoding of both masks.

Per stage: freed heap memory is given back to the OS (``malloc_trim``), then the process's peak
RSS is reset (``/proc/self/clear_refs``, Linux) before the stage
and read after it (VmHWM); ``extra`` is that peak less the RSS before the stage, also in bytes per
image pixel (a full-size uint8 plane is 1 B/px, float32 4 B/px); ``kept`` is what the stage's
results add to the RSS afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["synthetic_photo", "run_stages", "main"]

GIB = 1024**3


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: clear_refs value 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def synthetic_photo(width: int, height: int, seed: int = 0, block: int = 8
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A cheap large test photo: (H, W, 3) uint8, a random (H/block, W/block) picture upscaled
    by nearest neighbour (flat blocks: compresses well, decodes at full size), with a disc-like
    object of a distinct colour; and its mask (H, W) uint8 {0, 255}. Memory: the outputs plus
    one small picture (no full-size float temporaries)."""
    import cv2

    rng = np.random.default_rng(seed)
    small_h, small_w = max(2, height // block), max(2, width // block)
    small = rng.integers(40, 120, (small_h, small_w, 3), dtype=np.uint8)
    yy, xx = np.ogrid[:small_h, :small_w]
    angle = np.arctan2(yy - small_h / 2, xx - small_w / 2)
    radius = np.hypot((yy - small_h / 2) / (0.3 * small_h), (xx - small_w / 2) / (0.3 * small_w))
    inside = (radius < 1 + 0.08 * np.sin(7 * angle)).astype(np.uint8) * 255
    small[inside > 0] = (200, 60, 40)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    mask = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


def run_stages(width: int, height: int, threads: int = 1, seed: int = 0,
               out: Callable[[str], object] = print) -> list[dict]:
    """One row per stage: stage, seconds, extra (bytes above the RSS before it), kept (bytes it
    left), rss_after."""
    import cv2
    import torch

    from pipeline.bench.refiner import _calibrated_model
    from pipeline.io import decode_image, decode_mask, encode_png, resize_mask, to_binary_u8, to_soft_u8
    from pipeline.memory import release_memory
    from pipeline.metrics import change_metrics, image_metrics
    from pipeline.refine import RefineOptions, prepare_model
    from pipeline.refine.cascade import refine_detailed
    from pipeline.refine.edgecheck import edge_check
    from pipeline.refine.regions_trust import accept_regions, changes_of, load_region_model
    from pipeline.refine.trust import trust_features

    torch.set_num_threads(threads)
    pixels = width * height
    image, gt = synthetic_photo(width, height, seed)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    gt_png = encode_png(gt)
    coarse_png = encode_png(cv2.resize(gt, (width // 8, height // 8), interpolation=cv2.INTER_AREA))
    del image, gt, bgr
    options = RefineOptions(scales=(0.125,), align=8, decode="strided", stride=16, tile_encoder=512)
    model = prepare_model(_calibrated_model("crm_mnv2", seed), options)
    region_model = load_region_model("shipped")
    out(f"[stages] {width}x{height} ({pixels / 1e6:.0f} MP): JPEG {len(jpeg) / 1e6:.1f} MB, truth PNG "
        f"{len(gt_png) / 1e6:.1f} MB, coarse PNG {len(coarse_png) / 1e6:.2f} MB; "
        f"RSS {_status('VmRSS') / GIB:.2f} GiB")
    state: dict = {}
    rows = []

    def stage(name: str, fn: Callable[[], object]) -> None:
        release_memory()  # freed heap back to the OS, so a stage cannot reuse it unseen
        before = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        peak, after = _status("VmHWM"), _status("VmRSS")
        row = dict(stage=name, seconds=seconds, extra=peak - before, kept=after - before, rss_after=after)
        rows.append(row)
        out(f"  {name:<28} {seconds:7.1f} s  extra {row['extra'] / GIB:6.2f} GiB "
            f"({row['extra'] / pixels:5.1f} B/px)  kept {row['kept'] / pixels:5.1f} B/px  "
            f"RSS after {after / GIB:5.2f} GiB")

    def refine():
        r = refine_detailed(model, state["image"], state["coarse"], options=options)
        state.update(prob=r.prob, coarse01=r.coarse01)

    def per_change():
        # as decide_regions for an output whose image score falls in the region model's band
        # (0.7): every change is judged
        changes = changes_of(state["prob"], state["coarse01"], state["image"])
        accept = region_model.accepts(changes, state["features"], 0.7)
        state["accepted"], _ = accept_regions(state["prob"], state["coarse01"], changes, accept)

    def masks():
        state["refined"] = to_binary_u8(state["prob"])
        state["soft"] = to_soft_u8(state["prob"])

    def metrics():
        for pred in (state["coarse"], state["refined"]):
            image_metrics(pred, state["gt"])
        change_metrics(state["coarse"], state["refined"])

    stage("decode image (JPEG)", lambda: state.update(image=decode_image(jpeg, max_pixels=pixels)))
    stage("decode + upsample coarse", lambda: state.update(
        coarse=resize_mask(decode_mask(coarse_png, max_pixels=pixels), height, width)))
    stage("decode truth (PNG)", lambda: state.update(gt=decode_mask(gt_png, max_pixels=pixels)))
    stage("refine (strided, 1/8 scale)", refine)
    stage("edge check", lambda: edge_check(state["prob"], state["coarse01"], state["image"], 0.25))
    stage("trust features", lambda: state.update(
        features=trust_features(state["prob"], state["coarse01"], state["image"])))
    stage("per-change acceptance", per_change)
    stage("binary + soft masks", masks)
    stage("metrics (coarse, refined)", metrics)
    stage("PNG encode (binary, soft)", lambda: (encode_png(state["refined"]), encode_png(state["soft"])))
    held = {k: v.nbytes for k, v in state.items() if isinstance(v, np.ndarray)}
    total = sum(held.values()) / pixels
    out("[stages] full-size arrays held at the end: " + ", ".join(
        f"{k} {v / pixels:.0f} B/px" for k, v in held.items()) + f" (total {total:.0f} B/px)")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.bench.sizes import LARGE_SIZES, parse_size

    parser = argparse.ArgumentParser(prog="samsr benchmark memory --stages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="16k", help="WxH or 2k/4k/8k/16k (default 16k = 16000x12000)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        width, height = parse_size(args.size, LARGE_SIZES)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    run_stages(width, height, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
