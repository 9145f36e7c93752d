"""Memory benchmark: peak RSS and time of one refinement, tiled vs untiled encoder (issue 32).

    samsr benchmark memory                                # 2k, 4k, 8k; crm_mnv2 and crm_r50
    samsr benchmark memory --sizes 2k,4k --models crm_mnv2 --threads 2
    samsr benchmark memory --watch [--limit-gb 5] -- samsr refine --config configs/demo.yaml
    samsr benchmark memory --stages [--size 16k]          # each stage of one sample's path
    python -m pipeline.bench.memory --help

Each case (size, model, mode) runs `refine` in a fresh subprocess, whose peak resident set
(VmHWM of /proc/self/status, else ru_maxrss) is the number reported: everything the refining
process holds (interpreter, torch, weights, the uint8 image, the network's tensors). Modes:

  tiled    ``tile_encoder`` = the tile side (default 2048 px), whatever the size
  untiled  ``tile_encoder: off``; run only up to ``--untiled-max-mp`` megapixels (default 16:
           the untiled encoder needs ~13 GiB at 48 MP with crm_mnv2), else a row says skipped

Where both modes ran, tiled rows get the agreement with untiled (share of pixels with the same
binary value at 0.5), the largest probability difference, and time / memory ratios. Weights are
random (seeded, BN statistics calibrated: `pipeline.bench.refiner`), images synthetic (2k =
2000x1500, 4k = 4000x3000, 8k = 8000x6000, 16k = 16000x12000). Refine options: one scale (1.0),
``align: 8``, every exact optimisation; ``--scales`` changes the scales. A last line fits
``peak = a + b * pixels`` per model over the tiled rows: the per-actor memory ask.

``--watch -- CMD ...`` instead runs CMD and reports the sampled peak RSS of every process of its
tree (driver, Ray's GCS and raylet, workers): :mod:`pipeline.bench.proctree`. ``--stages``
measures each stage of one sample's path (decode, upsample, refine's buffers, edge check, trust
features, masks, metrics, PNG) at 16000x12000: :mod:`pipeline.bench.path_memory`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.bench.sizes import LARGE_SIZES, parse_size

__all__ = ["NAMED_SIZES", "run", "main", "format_table", "fit_ask"]

NAMED_SIZES = LARGE_SIZES
GIB = 1024**3
_POLL_S = 0.2


def _peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(spec: dict) -> dict:
    """One case, in this (fresh) process: refine the saved image, report time and peak RSS."""
    import torch

    from pipeline.bench.refiner import _calibrated_model
    from pipeline.refine import RefineOptions, prepare_model, refine

    torch.set_num_threads(spec["threads"])
    options = RefineOptions(scales=tuple(spec["scales"]), align=8, tile_encoder=spec["tile_encoder"])
    model = prepare_model(_calibrated_model(spec["model"], spec["seed"]), options)
    image, coarse = np.load(spec["image"]), np.load(spec["coarse"])
    colors = None  # a v2.1 model gets a colour map at the coarse mask's size
    if model.takes_proposals:
        colors = np.random.default_rng(spec["seed"]).integers(0, 256, (*coarse.shape, 3), dtype=np.uint8)
    before = _peak_rss_bytes()
    start = time.perf_counter()
    prob = refine(model, image, coarse, colors, options=options)
    wall = time.perf_counter() - start
    peak = _peak_rss_bytes()
    if spec.get("output"):
        np.save(spec["output"], prob.astype(np.float16))
    return dict(status="ok", wall_s=wall, peak_rss=peak, rss_before=before)


def _measure(spec: dict, limit_bytes: int, timeout_s: float | None) -> dict:
    """Runs one case in a fresh subprocess under an RSS watchdog and an optional time limit."""
    import psutil

    cmd = [sys.executable, "-m", "pipeline.bench.memory", "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        watched, started, killed = psutil.Process(proc.pid), time.monotonic(), None
        while proc.poll() is None:
            time.sleep(_POLL_S)
            try:
                rss = watched.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            if rss > limit_bytes:
                killed = dict(status="exceeded", error=f"RSS passed the {limit_bytes / GIB:.1f} GiB limit")
            elif timeout_s is not None and time.monotonic() - started > timeout_s:
                killed = dict(status="timeout", error=f"still running after {timeout_s:.0f} s")
            if killed:
                proc.kill()
                proc.wait()
                return killed
        out.seek(0)
        text = out.read()
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return dict(status="error", error=f"exit code {proc.returncode}: {text[-500:]}")


def _default_limit() -> int:
    import psutil

    return int(psutil.virtual_memory().available - 2 * GIB)


def fit_ask(rows: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """Per model, least-squares ``peak_bytes = a + b * pixels`` over the ok tiled rows (at least two
    sizes): {model: (a in GiB, b in bytes per pixel)}."""
    fits = {}
    for model in sorted({r["model"] for r in rows}):
        pts = [(r["pixels"], r["peak_rss"]) for r in rows
               if r["model"] == model and r["mode"] == "tiled" and r["status"] == "ok"]
        if len({p for p, _ in pts}) < 2:
            continue
        x, y = np.array([p for p, _ in pts], float), np.array([q for _, q in pts], float)
        b, a = np.polyfit(x, y, 1)
        fits[model] = (a / GIB, b)
    return fits


def run(
    sizes: Sequence[tuple[int, int]],
    models: Sequence[str] = ("crm_mnv2", "crm_r50"),
    tile: int = 2048,
    untiled_max_mp: float = 16.0,
    threads: int = 1,
    scales: Sequence[float] = (1.0,),
    memory_limit_gb: float | None = None,
    timeout_s: float | None = None,
    seed: int = 0,
    out: Callable[[str], object] = print,
) -> list[dict]:
    """One row per (size, model, mode): size, pixels, model, mode, status, error, wall_s,
    peak_rss (bytes), rss_before (bytes, after loading model and image), agreement and
    max_abs_diff (tiled vs untiled where both ran), time_ratio and memory_ratio (tiled / untiled)."""
    from pipeline.bench.refiner import synthetic_case
    from pipeline.refine import RefineOptions

    RefineOptions(tile_encoder=tile, scales=tuple(scales))  # bad values fail before any work
    limit = int(memory_limit_gb * GIB) if memory_limit_gb else _default_limit()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="samsr-memory-") as tmp:
        for width, height in sizes:
            pixels = width * height
            image, coarse = synthetic_case(width, height, seed)
            paths = {"image": str(Path(tmp) / "image.npy"), "coarse": str(Path(tmp) / "coarse.npy")}
            np.save(paths["image"], image)
            np.save(paths["coarse"], coarse)
            del image, coarse
            both = pixels <= untiled_max_mp * 1e6
            for model in models:
                size_rows = {}
                for mode, setting in (("untiled", "off"), ("tiled", tile)):
                    row = dict(size=f"{width}x{height}", pixels=pixels, model=model, mode=mode,
                               threads=threads, status="skipped", error=None, wall_s=None, peak_rss=None,
                               rss_before=None, agreement=None, max_abs_diff=None, time_ratio=None,
                               memory_ratio=None)
                    if mode == "untiled" and not both:
                        row["error"] = f"untiled above {untiled_max_mp:g} MP: not run"
                    else:
                        output = str(Path(tmp) / f"{mode}.npy") if both else None
                        spec = dict(paths, model=model, seed=seed, threads=threads, scales=list(scales),
                                    tile_encoder=setting, output=output)
                        out(f"[memory bench] {width}x{height} {model} {mode} ...")
                        result = _measure(spec, limit, timeout_s)
                        row.update(status=result["status"], error=result.get("error"),
                                   wall_s=result.get("wall_s"), peak_rss=result.get("peak_rss"),
                                   rss_before=result.get("rss_before"), output=output)
                    size_rows[mode] = row
                    out(_format_row(row))
                _compare(size_rows)
                rows += size_rows.values()
    out(format_table(rows))
    for model, (a, b) in fit_ask(rows).items():
        out(f"per-actor ask, {model}, tiled: peak RSS ~ {a:.2f} GiB + {b:.1f} bytes/px x pixels "
            f"({a + b * 48e6 / GIB:.2f} GiB at 48 MP, {a + b * 192e6 / GIB:.2f} GiB at 192 MP)")
    return rows


def _compare(size_rows: dict[str, dict]) -> None:
    tiled, untiled = size_rows["tiled"], size_rows["untiled"]
    if tiled["status"] == untiled["status"] == "ok" and tiled.get("output") and untiled.get("output"):
        a = np.load(tiled["output"]).astype(np.float32)
        b = np.load(untiled["output"]).astype(np.float32)
        tiled.update(agreement=float(((a > 0.5) == (b > 0.5)).mean()),
                     max_abs_diff=float(np.abs(a - b).max()),
                     time_ratio=tiled["wall_s"] / untiled["wall_s"],
                     memory_ratio=tiled["peak_rss"] / untiled["peak_rss"])
    for row in size_rows.values():
        path = row.pop("output", None)
        if path and os.path.exists(path):
            os.remove(path)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _format_row(row: dict) -> str:
    note = f"  ({row['error']})" if row.get("error") else ""
    return (f"  {row['size']:>11} {row['model']:<9} {row['mode']:<8} {row['status']:<8} "
            f"wall {_fmt(row['wall_s'], '.1f')} s  peak {_fmt(row['peak_rss'], '.2f', GIB)} GiB{note}")


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of `run` rows."""
    header = (f"{'size':>11} {'model':<9} {'mode':<8} {'status':<8} {'peak GiB':>8} {'wall s':>8} "
              f"{'agree %':>8} {'maxdiff':>8} {'time x':>7} {'mem x':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        agree = None if r["agreement"] is None else 100 * r["agreement"]
        lines.append(
            f"{r['size']:>11} {r['model']:<9} {r['mode']:<8} {r['status']:<8} "
            f"{_fmt(r['peak_rss'], '.2f', GIB):>8} {_fmt(r['wall_s'], '.1f'):>8} {_fmt(agree, '.3f'):>8} "
            f"{_fmt(r['max_abs_diff'], '.1e'):>8} {_fmt(r['time_ratio'], '.2f'):>7} "
            f"{_fmt(r['memory_ratio'], '.2f'):>6}" + (f"  {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # one case, run by `_measure` in a fresh process
        print(json.dumps(_child(json.loads(argv[1]))), flush=True)
        return 0
    if argv[:1] == ["--watch"]:  # a whole command's process tree (pipeline.bench.proctree)
        from pipeline.bench.proctree import main as watch_main

        return watch_main(argv[1:])
    if argv[:1] == ["--stages"]:  # one sample's path, stage by stage (pipeline.bench.path_memory)
        from pipeline.bench.path_memory import main as stages_main

        return stages_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="samsr benchmark memory", description=__doc__.split("\n\n")[0],
        epilog="Two other modes, each with its own --help: `samsr benchmark memory --watch [--limit-gb N] "
               "-- CMD ...` (the peak RSS of every process of a command's tree, e.g. a whole `samsr "
               "refine`) and `samsr benchmark memory --stages [--size 16k]` (each stage of one sample's "
               "path).")
    parser.add_argument("--sizes", default="2k,4k,8k", help="comma-separated WxH or 2k/4k/8k/16k")
    parser.add_argument("--models", default="crm_mnv2,crm_r50", help="registry names (random weights)")
    parser.add_argument("--tile", type=int, default=2048, help="tile_encoder of the tiled mode, px")
    parser.add_argument("--untiled-max-mp", type=float, default=16.0,
                        help="run untiled only up to this many megapixels (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per case (default 1)")
    parser.add_argument("--scales", default="1.0", help="comma-separated cascade scales (default 1.0)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="kill a case whose RSS passes this (default: available memory less 2 GiB)")
    parser.add_argument("--timeout-s", type=float, default=None, help="kill a case after this long")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(s, NAMED_SIZES) for s in args.sizes.split(",") if s]
        scales = [float(s) for s in args.scales.split(",") if s]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    models = [m for m in args.models.split(",") if m]
    from pipeline.models.registry import model_spec

    for name in models:
        try:
            model_spec(name)
        except ValueError as exc:
            parser.error(str(exc))
    rows = run(sizes, models, tile=args.tile, untiled_max_mp=args.untiled_max_mp, threads=args.threads,
               scales=scales, memory_limit_gb=args.memory_limit_gb, timeout_s=args.timeout_s)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
