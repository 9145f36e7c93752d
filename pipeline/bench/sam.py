"""Benchmark: `FastMaskGenerator` vs segment-anything's `SamAutomaticMaskGenerator`.

Side by side on the same model (random weights, official ViT-B shape by default), the same
synthetic working-size image (768x1024) and the same settings (32x32 point prompts, the
thesis's thresholds). A default random SAM keeps no mask at all (its logits stay within +-1),
which would benchmark nothing, so by default its decoder weights are rearranged with
`pipeline.sam.synthetic.make_busy` (``iou_bias=0.9``): most prompts then pass the quality and
stability filters, like a trained SAM's. ``--plain`` benchmarks the unmodified random model.

    .venv/bin/python -m pipeline.bench.sam --model-type vit_b --points-per-side 32
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from pipeline.sam.build import build_sam
from pipeline.sam.generator import FastMaskGenerator
from pipeline.sam.synthetic import make_busy

__all__ = ["main", "run", "synthetic_image"]


def synthetic_image(height: int = 768, width: int = 1024, n_shapes: int = 30, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: a flat background with ``n_shapes`` coloured rectangles."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(n_shapes):
        y0, x0 = rng.integers(0, height - height // 16), rng.integers(0, width - width // 16)
        hh, ww = rng.integers(height // 40 + 1, height // 2), rng.integers(width // 40 + 1, width // 2)
        img[y0:y0 + hh, x0:x0 + ww] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def _same(stock: list[dict[str, Any]], fast: np.ndarray) -> tuple[bool, float]:
    """(identical mask lists in the same order, min IoU over index-matched masks)."""
    if len(stock) != len(fast):
        return False, 0.0
    ious = []
    for ann, m in zip(stock, fast):
        s = ann["segmentation"]
        union = np.logical_or(s, m).sum()
        ious.append(1.0 if union == 0 else np.logical_and(s, m).sum() / union)
    identical = all(np.array_equal(a["segmentation"], m) for a, m in zip(stock, fast))
    return identical, float(min(ious, default=1.0))


def run(model_type: str = "vit_b", points_per_side: int = 32, height: int = 768, width: int = 1024,
        busy: bool = True, repeats: int = 1, threads: int | None = None, seed: int = 0,
        device: str = "cpu", **generator_kwargs: Any) -> dict[str, Any]:
    """Time both generators on one image; returns and prints seconds per image and the ratio."""
    if threads:
        torch.set_num_threads(threads)
    sam = build_sam(model_type, seed=seed, device=device)
    if busy:
        make_busy(sam, iou_bias=0.9)
    image = synthetic_image(height, width, seed=seed)
    kwargs = dict(points_per_side=points_per_side, **generator_kwargs)
    fast_gen = FastMaskGenerator(sam, **kwargs)
    stock_gen = SamAutomaticMaskGenerator(sam, **kwargs)
    # wall time, and process CPU time (robust on a shared machine: with one thread it is the
    # time the work would take on an idle core)
    fast_t, stock_t, fast_cpu, stock_cpu = [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fast = fast_gen.generate(image)
        fast_t.append(time.perf_counter() - t0)
        fast_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        stock = stock_gen.generate(image)
        stock_t.append(time.perf_counter() - t0)
        stock_cpu.append(time.process_time() - c0)
    identical, min_iou = _same(stock, fast.masks)
    result = {
        "model_type": model_type, "device": str(device), "busy": busy, "image": f"{height}x{width}",
        "points": points_per_side ** 2, "threads": torch.get_num_threads(),
        "fast_s": min(fast_t), "stock_s": min(stock_t), "speedup": min(stock_t) / min(fast_t),
        "fast_cpu_s": min(fast_cpu), "stock_cpu_s": min(stock_cpu),
        "speedup_cpu": min(stock_cpu) / min(fast_cpu),
        **{f"fast_{k}": v for k, v in fast_gen.last_stats.items()},
        "masks_fast": len(fast), "masks_stock": len(stock), "identical": identical, "min_iou": min_iou,
    }
    print(f"SAM {model_type} ({'busy' if busy else 'plain'} random weights) on {device}, image "
          f"{height}x{width}, {points_per_side}x{points_per_side} points, {result['threads']} threads")
    print(f"  stock SamAutomaticMaskGenerator: {result['stock_s']:8.2f} s/image wall, "
          f"{result['stock_cpu_s']:8.2f} s CPU, {len(stock)} masks")
    print(f"  FastMaskGenerator              : {result['fast_s']:8.2f} s/image wall, "
          f"{result['fast_cpu_s']:8.2f} s CPU, {len(fast)} masks")
    st = fast_gen.last_stats
    print(f"  fast decoder: {st['prompts_upscaled']}/{st['prompts']} prompts upscaled "
          f"({3 * st['prompts_upscaled']}/{3 * st['prompts']} candidate masks; the stock generator "
          f"upscales all), {st['masks_passing_iou']} masks pass the predicted-IoU filter")
    print(f"  speedup {result['speedup']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU; "
          f"identical masks: {identical} (min IoU {min_iou:.4f})")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--plain", action="store_true", help="unmodified random weights")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu / cuda / cuda:N (default cpu)")
    args = parser.parse_args(argv)
    return run(args.model_type, args.points_per_side, args.height, args.width, busy=not args.plain,
               repeats=args.repeats, threads=args.threads, device=args.device)


if __name__ == "__main__":
    main()
