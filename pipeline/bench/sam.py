"""Benchmark: `FastMaskGenerator` vs segment-anything's `SamAutomaticMaskGenerator`.

Side by side on the same model (random weights, official ViT-B shape by default), the same
synthetic working-size image (768x1024) and the same settings (32x32 point prompts, the
thesis's thresholds). A default random SAM keeps no mask at all (its logits stay within +-1),
which would benchmark nothing, so by default its decoder weights are rearranged with
`pipeline.sam.synthetic.make_busy` (``iou_bias=0.9``): most prompts then pass the quality and
stability filters, like a trained SAM's. ``--plain`` benchmarks the unmodified random model.

    .venv/bin/python -m pipeline.bench.sam --model-type vit_b --points-per-side 32 \
        [--reassociate] [--precision bf16]

``--reassociate`` / ``--precision bf16`` add the fast generator's opt-in non-exact modes
(reordered decoder products, image encoder under autocast): their ratio to stock and the share
of masks matched at IoU >= 0.99 either way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from pipeline.bench.device import device_name, exact_math, synchronize
from pipeline.sam.build import build_sam
from pipeline.sam.generator import FastMaskGenerator
from pipeline.sam.synthetic import make_busy

__all__ = ["main", "run", "synthetic_image", "best_match_iou", "matched"]


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


def best_match_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each mask of ``a`` ((N, h, w) bool), its highest IoU with any mask of ``b`` ((M, h, w));
    0 where ``b`` is empty."""
    if not len(a):
        return np.zeros(0)
    if not len(b):
        return np.zeros(len(a))
    fa = torch.from_numpy(np.ascontiguousarray(a)).flatten(1).float()
    fb = torch.from_numpy(np.ascontiguousarray(b)).flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return (inter / union.clamp(min=1)).max(1).values.numpy()


def matched(stock: np.ndarray, other: np.ndarray, iou: float = 0.99) -> dict[str, float]:
    """How well a non-exact generator's masks match stock's, whatever their order: the share of
    stock's masks with an IoU >= ``iou`` match among ``other``'s (recall), the share of
    ``other``'s masks with one among stock's (precision), and the lowest best-match IoU of a
    stock mask."""
    fwd, back = best_match_iou(stock, other), best_match_iou(other, stock)
    return {"recall": float((fwd >= iou).mean()) if len(fwd) else 1.0,
            "precision": float((back >= iou).mean()) if len(back) else 1.0,
            "min_iou": float(fwd.min()) if len(fwd) else 1.0}


def _timed(fn: Any, repeats: int, device: Any = "cpu") -> tuple[Any, float, float]:
    """(last result, min wall s, min process CPU s) over ``repeats`` calls, after one untimed
    warm-up call (each generator warms its own code paths; CUDA start-up stays out)."""
    fn()
    synchronize(device)
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        synchronize(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, min(walls), min(cpus)


def run(model_type: str = "vit_b", points_per_side: int = 32, height: int = 768, width: int = 1024,
        busy: bool = True, repeats: int = 1, threads: int | None = None, seed: int = 0,
        device: str = "cpu", precision: str = "fp32", reassociate: bool = False,
        **generator_kwargs: Any) -> dict[str, Any]:
    """Time both generators on one image; returns and prints seconds per image and the ratio.

    With ``precision`` "bf16" / "fp16" and/or ``reassociate`` (the fast generator's opt-in
    modes, not exact) the fast generator is also timed in that mode ("approx"), with its ratio
    to stock and how its masks match stock's (:func:`matched`, IoU >= 0.99)."""
    if threads:
        torch.set_num_threads(threads)
    exact_math()  # "identical masks" compares stock and fast outputs
    sam = build_sam(model_type, seed=seed, device=device)
    if busy:
        make_busy(sam, iou_bias=0.9)
    image = synthetic_image(height, width, seed=seed)
    kwargs = dict(points_per_side=points_per_side, **generator_kwargs)
    fast_gen = FastMaskGenerator(sam, **kwargs)
    stock_gen = SamAutomaticMaskGenerator(sam, **kwargs)
    # wall time, and process CPU time (robust on a shared machine: with one thread it is the
    # time the work would take on an idle core)
    fast, fast_s, fast_cpu = _timed(lambda: fast_gen.generate(image), repeats, device)
    stats = dict(fast_gen.last_stats)
    stock, stock_s, stock_cpu = _timed(lambda: stock_gen.generate(image), repeats, device)
    identical, min_iou = _same(stock, fast.masks)
    result = {
        "model_type": model_type, "device": str(device), "device_name": device_name(device),
        "busy": busy, "image": f"{height}x{width}",
        "points": points_per_side ** 2, "threads": torch.get_num_threads(),
        "fast_s": fast_s, "stock_s": stock_s, "speedup": stock_s / fast_s,
        "fast_cpu_s": fast_cpu, "stock_cpu_s": stock_cpu, "speedup_cpu": stock_cpu / fast_cpu,
        **{f"fast_{k}": v for k, v in stats.items()},
        "masks_fast": len(fast), "masks_stock": len(stock), "identical": identical, "min_iou": min_iou,
    }
    approx = precision != "fp32" or reassociate
    mode = " + ".join([f"{precision} encoder"] * (precision != "fp32") + ["reassociated"] * reassociate)
    if approx:
        low_gen = FastMaskGenerator(sam, precision=precision, reassociate=reassociate, **kwargs)
        low, low_s, low_cpu = _timed(lambda: low_gen.generate(image), repeats, device)
        empty = np.zeros((0, height, width), bool)
        m = matched(np.stack([a["segmentation"] for a in stock]) if stock else empty, low.masks)
        result.update({"precision": precision, "reassociate": reassociate, "low_s": low_s,
                       "low_cpu_s": low_cpu,
                       "speedup_low": stock_s / low_s, "speedup_low_cpu": stock_cpu / low_cpu,
                       "masks_low": len(low), "low_recall": m["recall"], "low_precision": m["precision"],
                       "low_min_iou": m["min_iou"]})
    print(f"SAM {model_type} ({'busy' if busy else 'plain'} random weights) on {result['device_name']}, "
          "image "
          f"{height}x{width}, {points_per_side}x{points_per_side} points, {result['threads']} threads")
    print(f"  stock SamAutomaticMaskGenerator: {result['stock_s']:8.2f} s/image wall, "
          f"{result['stock_cpu_s']:8.2f} s CPU, {len(stock)} masks")
    print(f"  FastMaskGenerator              : {result['fast_s']:8.2f} s/image wall, "
          f"{result['fast_cpu_s']:8.2f} s CPU, {len(fast)} masks")
    if approx:
        print(f"  FastMaskGenerator, approx     : {result['low_s']:8.2f} s/image wall, "
              f"{result['low_cpu_s']:8.2f} s CPU, {result['masks_low']} masks")
    print(f"  fast decoder: {stats['prompts_upscaled']}/{stats['prompts']} prompts upscaled "
          f"({3 * stats['prompts_upscaled']}/{3 * stats['prompts']} candidate masks; the stock generator "
          f"upscales all), {stats['masks_passing_iou']} masks pass the predicted-IoU filter")
    print(f"  speedup {result['speedup']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU; "
          f"identical masks: {identical} (min IoU {min_iou:.4f})")
    if approx:
        print(f"  approx ({mode}): speedup {result['speedup_low']:.2f}x wall, "
              f"{result['speedup_low_cpu']:.2f}x CPU; "
              f"stock masks matched at IoU >= 0.99: {result['low_recall']:.1%}, its masks matched: "
              f"{result['low_precision']:.1%} (lowest best-match IoU {result['low_min_iou']:.4f})")
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
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="also time the fast generator with its image encoder under autocast in this "
                             "type (not exact; default fp32: only the exact comparison)")
    parser.add_argument("--reassociate", action="store_true",
                        help="also time the fast generator with the reordered decoder products (not "
                             "bit-exact); combines with --precision")
    args = parser.parse_args(argv)
    return run(args.model_type, args.points_per_side, args.height, args.width, busy=not args.plain,
               repeats=args.repeats, threads=args.threads, device=args.device, precision=args.precision,
               reassociate=args.reassociate)


if __name__ == "__main__":
    main()
