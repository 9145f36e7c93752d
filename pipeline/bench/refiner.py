"""Refiner benchmark: official-style vs optimised inference, wall time and peak memory.

    samsr benchmark refiner                       # about 2k, 4k, 6k on the current device
    samsr benchmark refiner --sizes 1024x768 --configs official,exact
    python -m pipeline.bench.refiner --help

Each (size, configuration) runs in its own spawned child process, so peak memory is that
configuration's alone: peak RSS of the child on CPU (ru_maxrss), max allocated memory on
GPU. A watchdog kills a CPU child whose RSS passes the memory limit (default: 24 GB or what
the machine has free, less a margin), so an official-style run cannot take the machine down;
such a row says "exceeded". Configurations:

  official  layer4 run, BN kept, whole-map fusion, grid_sample decoding of every pixel at
            every scale (RefineOptions.official())
  exact     every exact optimisation (RefineOptions()); same output up to float rounding
  strided   exact + strided decoding with stride 4 (DESIGN §2.4)
  official-s1  the official-style path at scale 1.0 only: a cheaper probe of its peak memory
            (the cascade peaks at its last, full-size scale); not in the default set
  official-patched  official-style with patched fusion: the same computation (layer4, BN,
            grid_sample decoding) in less memory, a wall-time baseline where the official-style
            path does not fit the machine; not in the default set
  exact-bf16 / exact-fp16  exact under autocast in bfloat16 / float16 (``refine.precision``; the
            decoder's coordinate math stays float32); compared with ``exact`` when official is
            not run; not in the default set

Every configuration is timed after an untimed warm-up refine of a small input in the same
process (CUDA start-up outside the timing), with TF32 off; the table names the device.

Weights are random (seeded, BN statistics calibrated on a small synthetic input, decoder
bias centred) in the chosen architecture (default crm_r50); inputs are synthetic.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.bench.sizes import parse_size

__all__ = ["CONFIGS", "DEFAULT_SIZES", "run", "main", "synthetic_case", "synthetic_sample"]

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((2048, 1536), (4096, 3072), (6000, 4000))  # (W, H)
NAMED_SIZES = {"2k": (2048, 1536), "4k": (4096, 3072), "6k": (6000, 4000), "8k": (7680, 4320)}
GB = 1024**3
_POLL_S = 0.05
_MARGIN_BYTES = 2 * GB


def _options(config: str):
    from pipeline.refine import RefineOptions

    if config == "official":
        return RefineOptions.official()
    if config == "exact":
        return RefineOptions()
    if config == "strided":
        return RefineOptions(decode="strided", stride=4)
    if config == "official-s1":
        return RefineOptions.official(scales=(1.0,))
    if config == "official-patched":
        return RefineOptions.official(patched_fusion=True)
    if config in ("exact-bf16", "exact-fp16"):
        return RefineOptions(precision=config.split("-")[1])
    raise ValueError(f"unknown benchmark configuration {config!r}; known: {', '.join(ALL_CONFIGS)}")


CONFIGS = ("official", "exact", "strided")
ALL_CONFIGS = CONFIGS + ("official-s1", "official-patched", "exact-bf16", "exact-fp16")


def synthetic_case(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured image (H, W, 3) uint8 with a wavy object, and its coarse mask
    (H/8, W/8) uint8 in {0..255} (area-downsampled, as a low-resolution annotation)."""
    image, coarse, _ = synthetic_sample(width, height, seed)
    return image, coarse


def synthetic_sample(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`synthetic_case` plus the object's exact mask (H, W) uint8 {0, 255} (ground truth)."""
    import cv2

    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.ogrid[:height, :width]
    angle = np.arctan2(yy - height / 2, xx - width / 2)
    radius = np.hypot((yy - height / 2) / (0.3 * height), (xx - width / 2) / (0.3 * width))
    inside = radius < 1 + 0.08 * np.sin(7 * angle)
    image[inside] = image[inside] * 0.5 + np.array([200, 60, 40], np.float32) * 0.5
    image += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    gt = inside.astype(np.uint8) * 255
    small = (max(1, width // 8), max(1, height // 8))
    coarse = cv2.resize(gt, small, interpolation=cv2.INTER_AREA)
    return image, coarse, gt


def _calibrated_model(name: str, seed: int):
    """Random weights; BN statistics from a small synthetic batch; decoder bias centred."""
    import torch

    from pipeline.models import build_model, make_coord, make_input

    torch.manual_seed(seed)
    model = build_model(name)
    image, coarse = synthetic_case(192, 160, seed + 1)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mask = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None, None].float() / 255, size=(160, 192), mode="bilinear"
    )
    colors = torch.rand(1, 3, 160, 192) if model.takes_proposals else None
    inp = make_input(img, mask, colors)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    with torch.no_grad():
        model.train()
        model.encode(inp, run_layer4=True)
        model.eval()
        coord = make_coord((160, 192))[None]
        cell = torch.tensor([2 / 160, 2 / 192]).expand_as(coord)
        logits = model(inp, coord, cell)
        model.imnet.layers[-1].bias.sub_(logits.median())
    return model


def _child(spec: dict, results) -> None:
    """Runs one configuration; reports wall time and peak memory through `results`."""
    import resource

    import torch

    from pipeline.bench.device import exact_math
    from pipeline.refine import prepare_model

    try:
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        exact_math()  # the table compares outputs with official's
        device = torch.device(spec["device"])
        options = _options(spec["config"])
        model = prepare_model(_calibrated_model(spec["model"], spec["seed"]), options).to(device)
        image, coarse = np.load(spec["image"]), np.load(spec["coarse"])
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        prob, wall = timed_refine(model, image, coarse, options, device)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        np.save(spec["output"], prob)
        results.put(
            dict(status="ok", wall_s=wall, peak_rss=peak_rss, rss_before=rss_before, gpu_peak=gpu_peak)
        )
    except Exception as exc:  # reported as a row, the benchmark goes on
        results.put(dict(status="error", error=f"{type(exc).__name__}: {exc}"))


def timed_refine(model, image: np.ndarray, coarse: np.ndarray, options, device,
                 clock: Callable[[], float] = time.perf_counter) -> tuple[np.ndarray, float]:
    """(refine's output, its wall seconds) after an untimed warm-up refine of a small synthetic
    case with the same model and options (CUDA start-up and cuDNN's search stay out of the
    timing); the GPU's peak-memory counter restarts after the warm-up."""
    import torch

    from pipeline.bench.device import timed
    from pipeline.refine import refine

    small_image, small_coarse = synthetic_case(192, 160)

    def warm_up() -> None:
        refine(model, small_image, small_coarse, options=options, device=device)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    return timed(lambda: refine(model, image, coarse, options=options, device=device), device, warm_up, clock)


def _measure(spec: dict, limit_bytes: int, timeout_s: float | None = None) -> dict:
    """Runs `_child` in a spawned process under an RSS watchdog (and optional time limit)."""
    import psutil

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_child, args=(spec, results), daemon=True)
    child.start()
    watched = psutil.Process(child.pid)
    seen, outcome, started = 0, None, time.monotonic()
    while outcome is None:
        try:
            outcome = results.get(timeout=_POLL_S)
            break
        except queue.Empty:
            pass
        if not child.is_alive():
            outcome = dict(status="error", error=f"child exited with code {child.exitcode}")
            break
        try:
            rss = watched.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        seen = max(seen, rss)
        if rss > limit_bytes:
            child.kill()
            outcome = dict(status="exceeded", error=f"RSS passed the {limit_bytes / GB:.1f} GB limit; killed")
        elif timeout_s is not None and time.monotonic() - started > timeout_s:
            child.kill()
            outcome = dict(status="timeout", error=f"still running after {timeout_s:.0f} s; killed")
    child.join(timeout=30)
    outcome["watch_peak_rss"] = seen
    return outcome


def _default_limit() -> int:
    import psutil

    return int(min(24 * GB, psutil.virtual_memory().available - _MARGIN_BYTES))


def _agreement(prob: np.ndarray, ref: np.ndarray) -> dict:
    a, b = prob * 255 > 128, ref * 255 > 128
    union = int((a | b).sum())
    return dict(
        agreement=float((a == b).mean()),
        iou=float((a & b).sum() / union) if union else 1.0,
        max_abs_diff=float(np.abs(prob - ref).max()),
    )


def run(
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    device: str | None = None,
    out: Callable[[str], object] = print,
    configs: Sequence[str] = CONFIGS,
    model: str = "crm_r50",
    memory_limit_gb: float | None = None,
    threads: int | None = None,
    seed: int = 0,
    timeout_s: float | None = None,
) -> list[dict]:
    """Benchmark `configs` at each (width, height) in `sizes`; one row per (size, config).

    Row keys: size, width, height, config, device, model, status ("ok" / "exceeded" /
    "error"), error, wall_s, peak_bytes (GPU max allocated on CUDA, else child peak RSS),
    peak_rss_bytes, limit_bytes, speedup and memory_ratio (official / this; None without an
    ok official row), agreement, iou, max_abs_diff (against official, or against exact when
    official did not finish), reference.
    """
    import torch

    for config in configs:
        _options(config)  # validate names before any work
    from pipeline.bench.device import device_name

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    limit = int(memory_limit_gb * GB) if memory_limit_gb else _default_limit()
    rows: list[dict] = []
    card = device_name(device)
    with tempfile.TemporaryDirectory(prefix="samsr-bench-") as tmp:
        for width, height in sizes:
            image, coarse = synthetic_case(width, height, seed)
            paths = {"image": str(Path(tmp) / "image.npy"), "coarse": str(Path(tmp) / "coarse.npy")}
            np.save(paths["image"], image)
            np.save(paths["coarse"], coarse)
            del image
            size_rows = []
            for config in configs:
                output = str(Path(tmp) / f"{config}.npy")
                spec = dict(
                    paths,
                    config=config,
                    device=device,
                    model=model,
                    threads=threads,
                    seed=seed,
                    output=output,
                )
                out(f"[refiner bench] {width}x{height} {config} on {device} ...")
                result = _measure(spec, limit, timeout_s)
                peak = result.get("gpu_peak") or result.get("peak_rss") or result.get("watch_peak_rss")
                row = dict(
                    size=f"{width}x{height}",
                    width=width,
                    height=height,
                    config=config,
                    device=device,
                    device_name=card,
                    model=model,
                    status=result["status"],
                    error=result.get("error"),
                    wall_s=result.get("wall_s"),
                    peak_bytes=peak,
                    peak_rss_bytes=result.get("peak_rss"),
                    rss_before_bytes=result.get("rss_before"),
                    threads=threads,
                    limit_bytes=limit,
                    output=output if result["status"] == "ok" else None,
                    options=asdict(_options(config)),
                )
                size_rows.append(row)
                out(_format_row(row))
            _compare(size_rows)
            for row in size_rows:
                if row["output"] and os.path.exists(row["output"]):
                    os.remove(row["output"])
                row.pop("output")
            rows += size_rows
    out(format_table(rows))
    return rows


def _compare(rows: list[dict]) -> None:
    """Adds ratios against the official-style baseline and agreement with a reference.

    Wall-time baseline: "official", else "official-patched" (same computation). Memory
    baseline: "official", else "official-s1" (its peak step), else "official-patched".
    Reference output: "official", else "official-patched", else "exact".
    """
    ok = {r["config"]: r for r in rows if r["status"] == "ok"}
    speed_base = ok.get("official") or ok.get("official-patched")
    memory_base = ok.get("official") or ok.get("official-s1") or ok.get("official-patched")
    reference = ok.get("official") or ok.get("official-patched") or ok.get("exact")
    exceeded = [r for r in rows if r["config"].startswith("official") and r["status"] == "exceeded"]
    ref_prob = np.load(reference["output"]) if reference else None
    for row in rows:
        row.update(
            speedup=None,
            memory_ratio=None,
            agreement=None,
            iou=None,
            max_abs_diff=None,
            reference=None,
            speed_baseline=None,
            memory_baseline=None,
        )
        if row["status"] != "ok":
            continue
        if speed_base:
            row.update(speedup=speed_base["wall_s"] / row["wall_s"], speed_baseline=speed_base["config"])
        if memory_base:
            row.update(
                memory_ratio=memory_base["peak_bytes"] / row["peak_bytes"],
                memory_baseline=memory_base["config"],
            )
        if exceeded and not ok.get("official"):
            row["memory_ratio_at_least"] = exceeded[0]["limit_bytes"] / row["peak_bytes"]
        if ref_prob is not None and row["config"] != "official-s1":
            row.update(_agreement(np.load(row["output"]), ref_prob), reference=reference["config"])


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _format_row(row: dict) -> str:
    return (
        f"  {row['size']:>10} {row['config']:<10} {row['status']:<8} wall {_fmt(row['wall_s'], '.1f')} s  "
        f"peak {_fmt(row['peak_bytes'], '.2f', GB)} GB" + (f"  ({row['error']})" if row.get("error") else "")
    )


def format_table(rows: list[dict]) -> str:
    """Plain-text table of `run` rows."""
    header = (
        f"{'size':>10} {'config':<10} {'status':<8} {'wall s':>8} {'peak GB':>8} {'speedup':>8} "
        f"{'mem x':>7} {'agree':>8} {'IoU':>8} {'maxdiff':>9}"
    )
    names = sorted({r.get("device_name") or r.get("device", "?") for r in rows})
    lines = [f"device: {', '.join(names)}", header, "-" * len(header)]
    for r in rows:
        mem = _fmt(r.get("memory_ratio"), ".2f")
        if r.get("memory_ratio_at_least") is not None:
            mem = ">=" + format(r["memory_ratio_at_least"], ".1f")
        lines.append(
            f"{r['size']:>10} {r['config']:<10} {r['status']:<8} {_fmt(r['wall_s'], '.1f'):>8} "
            f"{_fmt(r['peak_bytes'], '.2f', GB):>8} {_fmt(r.get('speedup'), '.2f'):>8} {mem:>7} "
            f"{_fmt(r.get('agreement'), '.5f'):>8} {_fmt(r.get('iou'), '.5f'):>8} "
            f"{_fmt(r.get('max_abs_diff'), '.1e'):>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samsr benchmark refiner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2k,4k,6k", help="comma-separated WxH or 2k/4k/6k/8k")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(ALL_CONFIGS)}")
    parser.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cuda if available)")
    parser.add_argument("--model", default="crm_r50", help="registry name (random weights)")
    parser.add_argument("--memory-limit-gb", type=float, default=None, help="CPU RSS watchdog limit")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads per child")
    parser.add_argument("--timeout-s", type=float, default=None, help="kill a configuration after this long")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        sizes = [parse_size(s, NAMED_SIZES) for s in args.sizes.split(",") if s]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    configs = [c for c in args.configs.split(",") if c]
    rows = run(
        sizes,
        device=args.device,
        configs=configs,
        model=args.model,
        memory_limit_gb=args.memory_limit_gb,
        threads=args.threads,
    )
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["status"] in ("ok", "exceeded", "timeout") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
