"""Benchmark: one accelerator card end to end, in one table (``samsr benchmark gpu``).

    samsr benchmark gpu                       # on a GPU: the full check, a few minutes
    samsr benchmark gpu --small               # tiny sizes: what the tests run on CPU

Three parts, each on the current device (CUDA when available, else CPU):

1. **Refiner, fp32 vs bf16** (``pipeline.bench.refiner``: every configuration in its own child
   process): ``exact`` and ``exact-bf16`` (autocast, the LIIF coordinate math kept in float32)
   at 2k / 4k / 6k with random calibrated ``crm_r50`` weights: wall seconds, peak memory (GPU max
   allocated; peak RSS on CPU), and bf16's max |diff| and binary agreement with fp32.
2. **SAM automatic masks** (``pipeline.bench.sam``): ViT-H with random weights in the official
   shapes (decoder made "busy" so prompts pass the filters like a trained SAM's), 32 x 32 points,
   segment-anything's ``SamAutomaticMaskGenerator`` vs samsr's ``FastMaskGenerator``: images/s.
3. **Whole pipeline** (``samsr refine`` on a local Ray with this machine's GPUs): 24 synthetic
   4k images (``pipeline.bench.pipeline.write_inputs``), ``configs/default.yaml`` with the random
   ``crm_r50``: images/s at steady state and the GPU's busy share (``nvidia-smi`` utilisation
   sampled every 200 ms during the run; on CPU: n/a) next to the share of wall time the refiner
   actors spent refining (from the manifest's ``t_refine_ms``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["run", "main", "GpuSampler", "format_report", "pipeline_config", "FULL", "SMALL"]

FULL = dict(sizes=((2048, 1536), (4096, 3072), (6000, 4000)), model="crm_r50", sam_model="vit_h",
            sam_points=32, sam_size=(1024, 768), images=24, image_size=(4096, 3072))
SMALL = dict(sizes=((192, 128),), model="crm_mnv2", sam_model="tiny", sam_points=4, sam_size=(96, 64),
             images=3, image_size=(128, 96))


def visible_gpu_ids(environ=None) -> list[str]:
    """The GPUs this process may use, as ``nvidia-smi --id`` takes them: the entries of
    ``CUDA_VISIBLE_DEVICES`` (indexes or UUIDs) when set, else [] (every GPU)."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


class GpuSampler:
    """GPU utilisation (percent) sampled by ``nvidia-smi`` every ``interval_ms`` in the background,
    over the GPUs this process sees (``ids``, default :func:`visible_gpu_ids`; one line per GPU
    and sample, so ``mean`` is the mean over those GPUs); ``mean`` is None where there is no
    ``nvidia-smi`` (no NVIDIA GPU)."""

    def __init__(self, ids: list[str] | None = None, interval_ms: int = 200) -> None:
        ids = visible_gpu_ids() if ids is None else ids
        self.cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                    *([f"--id={','.join(ids)}"] if ids else []), f"-lms={interval_ms}"]
        self.samples: list[tuple[float, float]] = []  # (time.time(), busy fraction)
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), float(line.strip()) / 100))
            except ValueError:
                continue

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.thread.join(timeout=5)

    def mean(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        """Mean busy fraction of the samples taken between ``start`` and ``end`` (time.time())."""
        window = [v for t, v in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


def _refiner(sizes, model: str, device: str) -> list[dict]:
    from pipeline.bench.refiner import run as run_refiner

    rows = run_refiner(sizes, device=device, configs=("exact", "exact-bf16"), model=model, out=lambda _: None)
    return [{k: r.get(k) for k in ("size", "config", "status", "error", "wall_s", "peak_bytes", "speedup",
                                    "agreement", "max_abs_diff")} for r in rows]


def _sam(model_type: str, points: int, size: tuple[int, int], device: str) -> dict[str, Any]:
    from pipeline.bench.sam import run as run_sam

    r = run_sam(model_type, points, height=size[1], width=size[0], device=device)
    return {k: r[k] for k in ("model_type", "image", "points", "stock_s", "fast_s", "speedup", "masks_stock",
                              "masks_fast", "identical")}


def pipeline_config(uri: str, out: str, model: str, checkpoint: str, gpus: int, size: tuple[int, int]):
    """The pipeline part's job: ``configs/default.yaml``, crm with ``model``, on a local Ray with
    ``gpus`` GPUs (``refine.device: cuda``; none: ``cpu``), ``input.max_pixels`` the benchmark's
    image ``size`` (w, h): the GPU plan sizes the actors for it, not for the default's 192 MP."""
    from pipeline.bench.pipeline import ROOT
    from pipeline.config import load_config

    overrides = [(["input", "uri"], uri), (["output", "prefix"], out),
                 (["method"], "crm"), (["model", "name"], model), (["model", "checkpoint"], checkpoint),
                 (["refine", "device"], "cuda" if gpus else "cpu"), (["ray", "num_gpus"], gpus),
                 (["ray", "progress"], False), (["input", "max_pixels"], size[0] * size[1])]
    return load_config(str(ROOT / "configs" / "default.yaml"), overrides)


def _pipeline(images: int, size: tuple[int, int], model: str, work: str, device: str) -> dict[str, Any]:
    import torch

    from pipeline.bench.pipeline import mask_times, steady_state, write_inputs
    from pipeline.bench.refiner import _calibrated_model
    from pipeline.io import read_manifest
    from pipeline.io.weights import save_checkpoint
    from pipeline.runner.refine import run_refine

    checkpoint = os.path.join(work, f"{model}_random.pt")
    save_checkpoint(_calibrated_model(model, 0), checkpoint)
    uri = write_inputs(os.path.join(work, "in"), images, *size)
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    cfg = pipeline_config(uri, os.path.join(work, "out"), model, checkpoint, gpus, size)
    t0 = time.time()
    with GpuSampler() as sampler:
        result = run_refine(cfg)
    rows = read_manifest(cfg.output.prefix).to_pylist()
    done = sorted(zip(mask_times(rows), (r["t_refine_ms"] for r in rows)))
    actors = result.plan.refine_actors if result.plan else 1
    s = steady_state([t for t, _ in done], actors, t0)
    start, end = done[actors - 1][0], done[-1][0]  # the steady-state window
    busy = sum(ms for _, ms in done[actors:]) / 1000 / ((end - start) * actors)
    return {"images": images, "size": f"{size[0]}x{size[1]}", "model": model, "gpus": gpus,
            "refine_actors": actors, "images_per_s": s["images_per_s"], "startup_s": s["startup_s"],
            "wall_s": s["wall_s"], "gpu_busy": sampler.mean(start, end), "refine_share": busy}


def release_cached_memory(device: str) -> int:
    """Collect garbage and hand the CUDA caching allocator's free blocks back to the driver, so
    other processes (the Ray actors) can use them; returns the bytes still reserved here."""
    import gc

    import torch

    gc.collect()
    if not str(device).startswith("cuda"):
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(torch.device(device))


def run(small: bool = False, device: str | None = None, parts: Sequence[str] = ("refiner", "sam", "pipeline"),
        workdir: str | None = None) -> dict[str, Any]:
    """The three parts (module docstring); prints the table and returns the numbers."""
    import torch

    spec = SMALL if small else FULL
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from pipeline.bench.device import device_name

    card = device_name(device)
    result: dict[str, Any] = {"device": device, "card": card, "small": small}
    t0 = time.perf_counter()
    if "refiner" in parts:
        result["refiner"] = _refiner(spec["sizes"], spec["model"], device)
    if "sam" in parts:
        result["sam"] = _sam(spec["sam_model"], spec["sam_points"], spec["sam_size"], device)
    if "pipeline" in parts:
        release_cached_memory(device)  # SAM's (ViT-H's) cached blocks, before the Ray actors need the card
        work = workdir or tempfile.mkdtemp(prefix="samsr-bg-")
        try:
            result["pipeline"] = _pipeline(spec["images"], spec["image_size"], spec["model"], work, device)
        finally:
            if workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    result["total_s"] = time.perf_counter() - t0
    print(format_report(result))
    return result


def _f(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"samsr benchmark gpu on {r['card']}, {r['total_s']:.0f} s"]
    if "refiner" in r:
        lines += ["", "refiner          config       wall s   peak GB   bf16 vs fp32: max |diff|   agreement"]
        for row in r["refiner"]:
            bf16 = row["config"] != "exact"
            lines.append(f"  {row['size']:<13}  {row['config']:<11} {_f(row['wall_s'], '7.2f')}   "
                         f"{_f(row['peak_bytes'], '7.3f', 1024**3)}   "
                         f"{_f(row['max_abs_diff'] if bf16 else None, '24.1e'):>24}   "
                         f"{_f(row['agreement'] if bf16 else None, '.5f'):>9}"
                         + (f"  {row['status']}: {row['error']}" if row["status"] != "ok" else ""))
    if "sam" in r:
        s = r["sam"]
        lines += ["", f"SAM {s['model_type']} automatic masks, {s['image']}, {s['points']} points",
                  f"  stock SamAutomaticMaskGenerator  {1 / s['stock_s']:8.3f} images/s  "
                  f"({s['masks_stock']} masks)",
                  f"  samsr FastMaskGenerator          {1 / s['fast_s']:8.3f} images/s  "
                  f"({s['masks_fast']} masks)  {s['speedup']:.2f}x, identical masks: {s['identical']}"]
    if "pipeline" in r:
        p = r["pipeline"]
        busy = "n/a (no nvidia-smi)" if p["gpu_busy"] is None else f"{p['gpu_busy']:.0%}"
        lines += ["", f"pipeline: {p['images']} synthetic {p['size']} images, crm ({p['model']}), "
                      f"{p['gpus']} GPU(s), {p['refine_actors']} refiner actor(s)",
                  f"  {p['images_per_s']:.3f} images/s at steady state (start-up {p['startup_s']:.1f} s); "
                  f"GPU busy {busy}; refiner actors refining {p['refine_share']:.0%} of the time "
                  "(both over the steady-state window)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="samsr benchmark gpu", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--small", action="store_true", help="tiny sizes and models (CPU, tests)")
    ap.add_argument("--device", default=None, help="cuda / cuda:N / cpu (default: cuda when available)")
    ap.add_argument("--parts", default="refiner,sam,pipeline", help="comma-separated subset")
    ap.add_argument("--workdir", default=None, help="keep the pipeline part's inputs and outputs here")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"refiner", "sam", "pipeline"})
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from refiner, sam, pipeline")
    result = run(args.small, args.device, parts, args.workdir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    failed = [row for row in result.get("refiner", []) if row["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
