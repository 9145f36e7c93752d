"""Benchmark: what the Ray pipeline costs over the bare stage functions, and how it scales.

    samsr benchmark pipeline                          # the demo config, 12 synthetic 1024x768 images
    samsr benchmark pipeline --images 16 --size 2048x1536 --set refine.options.tta=none
    samsr benchmark pipeline --config configs/default.yaml --model crm_mnv2 \\
        --checkpoint pipeline/weights/crm_mnv2.pt --method crm

One run, one machine, the same synthetic images (:func:`pipeline.bench.refiner.synthetic_sample`,
written as a prefix layout with 8x-downsampled coarse masks and exact ground truth) and the same
job config throughout:

1. **Overhead.** A bare Python loop calls the pipeline's own stage functions one image at a time
   (``decode_batch`` -> ``ProposalWorker`` (samsr methods) -> ``RefinerWorker`` -> ``finish_batch``,
   the very objects Ray runs, built from the same job config), then the Ray pipeline
   (``run_refine``: a local Ray started in-process, one actor per model stage) runs the same
   images. Both are pinned to the same ``--cores`` CPU cores (``sched_setaffinity``; Ray's
   processes inherit it), so Ray's own processes compete for the same cores as the work, and
   its pipelining across stages cannot hide its cost. Masks must come out byte-identical.
2. **Scaling.** A two-node local cluster (:class:`pipeline.runner.local_cluster.LocalCluster`, one CPU
   per node, each node pinned to its own core, so the nodes share no core) runs the job through
   ``python -m jobs.refine`` with one, then two workers per model stage. Efficiency = images/s
   with 2 / (2 x images/s with 1). With a proposal stage (samsr methods) one "worker" is two
   actors that may sit on both nodes; ``--method crm`` measures one refiner actor per core.

Steady state: from the times the finished masks were written (their mtimes), the rate over the
images after the first ``w`` (w = workers): ``(n - w) / (t[n-1] - t[w-1])``, so model loading,
Ray start-up and the first image's warm-up are excluded; start-up is reported on its own as the
time to the first finished mask less one steady-state image time. Run it on a quiet machine:
other load moves these numbers (the ratios are measured side by side in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from pipeline.bench.sizes import parse_size

__all__ = ["run", "main", "write_inputs", "steady_state", "mask_times", "bare_loop", "bare_device",
           "format_report"]

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = str(ROOT / "configs" / "demo.yaml")


def write_inputs(root: str, n: int, width: int, height: int) -> str:
    """``n`` synthetic samples (``bench{i}_im.jpg`` / ``_seg.png`` (8x smaller) / ``_gt.png``)
    in ``root``; returns ``root``."""
    from pipeline.bench.refiner import synthetic_sample

    os.makedirs(root, exist_ok=True)
    for i in range(n):
        image, coarse, gt = synthetic_sample(width, height, seed=i)
        name = os.path.join(root, f"bench{i:04d}")
        cv2.imwrite(name + "_im.jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(name + "_seg.png", coarse)
        cv2.imwrite(name + "_gt.png", gt)
    return root


def steady_state(times: Sequence[float], workers: int, t_start: float) -> dict[str, float]:
    """Seconds per image at steady state and start-up seconds, from the completion times of a
    run (module docstring)."""
    t = sorted(times)
    n, w = len(t), max(1, workers)
    if n <= w:
        raise ValueError(f"steady state needs more than {w} finished images, got {n}")
    span = t[-1] - t[w - 1]
    per_image = span / (n - w)  # wall seconds per image, all workers together
    return {"per_image_s": per_image, "images_per_s": (n - w) / span if span > 0 else float("inf"),
            "startup_s": max(0.0, t[0] - t_start - w * per_image), "wall_s": t[-1] - t_start}


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def mask_times(rows: list[dict]) -> list[float]:
    """Write times (mtime) of the masks of manifest ``rows``, in row order; raises naming the
    samples when any row failed."""
    bad = [r["key"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"benchmark samples failed: {bad[:5]} ({len(bad)} in all)")
    return [os.stat(_local_path(r["output_uri"])).st_mtime for r in rows]


def bare_loop(cfg, threads: int) -> tuple[list[dict], float]:
    """Every sample of ``cfg.input`` through the stage functions in this process, one at a time.
    Returns (manifest rows, start time)."""
    from pipeline.io import list_samples
    from pipeline.runner.job import static_fields
    from pipeline.runner.workers import ProposalWorker, RefinerWorker, proposal_kwargs, refiner_kwargs
    from pipeline.stages import decode_batch, finish_batch, make_batch

    refs = list_samples(cfg.input.uri, cfg.input.layout)
    t_start = time.time()
    proposals = ProposalWorker(**proposal_kwargs(cfg, threads)) if cfg.uses_sam else None
    refiner = RefinerWorker(**refiner_kwargs(cfg, threads))
    static = static_fields(cfg, "bare-loop")
    rows = []
    for ref in refs:
        batch = make_batch([{"meta": {"key": ref.key, "ref": ref.to_dict(), "attempt": 1}}], ())
        batch = decode_batch(batch, max_pixels=cfg.input.max_pixels, load_gt=cfg.input.gt_suffix != "")
        if proposals is not None:
            batch = proposals(batch)
        batch = refiner(batch)
        out = finish_batch(batch, output_prefix=cfg.output.prefix, static=static)
        rows += [json.loads(r) for r in out["row"]]
    return rows, t_start


def bare_device(requested: str, cuda_visible: bool) -> str:
    """The device of the Ray run's model actors on this machine, for the bare loop to use too:
    ``refine.device`` itself, and for ``auto`` cuda when a GPU is visible (the local Ray cluster
    then has it and the plan gives the actors GPUs; outside Ray ``auto`` would mean cpu)."""
    if requested == "auto":
        return "cuda" if cuda_visible else "cpu"
    return requested


def _with(cfg, **sections) -> Any:
    """A copy of the job config with ``section={key: value}`` merged in (validated again)."""
    from pipeline.config import config_from_dict, config_to_dict

    data = json.loads(json.dumps(config_to_dict(cfg)))
    for name, values in sections.items():
        if isinstance(values, dict):
            data[name] = {**(data.get(name) or {}), **values}
        else:
            data[name] = values
    return config_from_dict(data)


class _Pinned:
    """Pin this process (and what it starts) to ``cores`` CPU cores; restore on exit."""

    def __init__(self, cores: int) -> None:
        self.before = os.sched_getaffinity(0)
        if cores > len(self.before):
            raise ValueError(f"--cores {cores}: this process may use only {len(self.before)} cores")
        self.cores = set(sorted(self.before)[:cores])

    def __enter__(self) -> _Pinned:
        os.sched_setaffinity(0, self.cores)
        return self

    def __exit__(self, *exc) -> None:
        os.sched_setaffinity(0, self.before)


def _masks(rows: list[dict]) -> dict[str, bytes]:
    return {r["key"]: Path(_local_path(r["output_uri"])).read_bytes() for r in rows}


def _overhead(cfg, work: str, cores: int, threads: int) -> dict[str, Any]:
    import torch

    from pipeline.bench.device import device_name, exact_math
    from pipeline.io import read_manifest
    from pipeline.runner.cluster import ray_is_initialized
    from pipeline.runner.refine import run_refine

    if ray_is_initialized():
        raise RuntimeError("benchmark pipeline starts its own pinned local Ray: run it in a process "
                           "that has not initialised Ray")
    workers = {"refine_actors": 1, "sam_actors": 1, "num_cpus": cores, "progress": False}
    device = bare_device(cfg.refine.device, torch.cuda.is_available())  # the same device on both sides
    exact_math()  # the masks are compared byte for byte (the Ray actors keep torch's defaults: TF32 off)
    with _Pinned(cores):
        bare_cfg = _with(cfg, output={"prefix": os.path.join(work, "out-bare")},
                         refine={"threads": threads, "device": device})
        bare_rows, t0 = bare_loop(bare_cfg, threads)
        bare = steady_state(mask_times(bare_rows), 1, t0)
        ray_cfg = _with(cfg, output={"prefix": os.path.join(work, "out-ray")}, refine={"threads": threads},
                        ray=workers)
        t0 = time.time()
        run_refine(ray_cfg)
    ray_rows = read_manifest(ray_cfg.output.prefix).to_pylist()
    ray = steady_state(mask_times(ray_rows), 1, t0)
    a, b = _masks(bare_rows), _masks(ray_rows)
    same = sum(a[k] == b.get(k) for k in a)
    return {"cores": cores, "device": device_name(device), "bare": bare, "ray": ray,
            "identical_masks": same, "images": len(a),
            "overhead": ray["per_image_s"] / bare["per_image_s"] - 1}


def _cluster_run(cluster, cfg, work: str, workers: int, threads: int, timeout_s: float) -> dict[str, float]:
    import yaml

    from pipeline.config import config_to_dict
    from pipeline.io import read_manifest

    name = f"w{workers}"
    job = _with(cfg, output={"prefix": os.path.join(work, f"out-{name}")}, refine={"threads": threads},
                ray={"refine_actors": workers, "sam_actors": workers, "progress": False, "num_cpus": None})
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(json.loads(json.dumps(config_to_dict(job))), f)
    env = dict(cluster.env, RAY_ADDRESS=cluster.gcs)
    before = _model_actor_nodes(cluster)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "jobs.refine", "--config", path], env=env, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode:
        raise RuntimeError(f"cluster run with {workers} worker(s) failed ({r.returncode}): "
                           f"{(r.stdout + r.stderr)[-3000:]}")
    rows = read_manifest(job.output.prefix).to_pylist()
    placed = {a: n for a, n in _model_actor_nodes(cluster).items() if a not in before}
    used = {row["worker_node"] for row in rows}
    return {**steady_state(mask_times(rows), workers, t0), "nodes": len(set(placed.values())),
            "nodes_used": len(used)}


def _model_actor_nodes(cluster) -> dict[str, str]:
    """{actor id: node id} of every model-stage actor (refiner, proposals) the cluster has had, live
    or dead, from Ray's state API: where the plan *placed* the workers. (Which nodes did work, from
    the manifest, can be fewer: with tiny images the first idle actor may take every batch.) Asked
    from a child with the cluster's environment (its auth token)."""
    out = cluster.python(
        "import json\n"
        "from ray.util.state import list_actors\n"
        f"actors = list_actors(address={cluster.dashboard!r}, limit=10_000, raise_on_missing_output=False)\n"
        "print(json.dumps({a.actor_id: a.node_id for a in actors if any(\n"
        "    k in (a.class_name or '') for k in ('RefinerWorker', 'ProposalWorker'))}))\n")
    return json.loads(out.strip().splitlines()[-1])


def _scaling(cfg, work: str, threads: int, timeout_s: float) -> dict[str, Any]:
    from pipeline.runner.local_cluster import LocalCluster

    tmp = tempfile.mkdtemp(prefix="samsr-bc-", dir="/tmp")  # short: Ray's socket paths are length-limited
    try:
        with LocalCluster(tmp, nodes=2, cpus=1, pin_cores=True) as cluster:
            one = _cluster_run(cluster, cfg, work, 1, threads, timeout_s)
            two = _cluster_run(cluster, cfg, work, 2, threads, timeout_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"one": one, "two": two, "efficiency": two["images_per_s"] / (2 * one["images_per_s"])}


def run(config: str | None = None, overrides: Sequence[tuple[list[str], Any]] = (), images: int = 12,
        size: tuple[int, int] = (1024, 768), cores: int = 1, threads: int = 1, scaling: bool = True,
        workdir: str | None = None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Both measurements (module docstring); returns the numbers and prints the table."""
    from pipeline.config import load_config

    base = load_config(config or DEMO_CONFIG, overrides)
    work = workdir or tempfile.mkdtemp(prefix="samsr-bp-")
    try:
        uri = write_inputs(os.path.join(work, "in"), images, *size)
        cfg = _with(base, input={"uri": uri, "layout": "prefix", "image_suffix": None, "mask_suffix": None,
                                 "gt_suffix": None, "limit": None})
        result: dict[str, Any] = {
            "images": images, "size": f"{size[0]}x{size[1]}", "method": cfg.method, "model": cfg.model.name,
            "threads": threads, "overhead": _overhead(cfg, work, cores, threads),
        }
        if scaling:
            result["scaling"] = _scaling(cfg, work, threads, timeout_s)
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_report(result))
    return result


def format_report(r: dict[str, Any]) -> str:
    o = r["overhead"]
    b, y = o["bare"], o["ray"]
    lines = [
        f"samsr benchmark pipeline: {r['images']} synthetic images {r['size']}, method {r['method']} "
        f"({r['model']}), {r['threads']} torch thread(s) per model",
        f"device (bare loop and Ray actors): {o.get('device', '?')}",
        "",
        f"overhead, both pinned to {o['cores']} core(s)    start-up s   steady s/image   vs bare loop",
        f"  bare loop over the stage functions   {b['startup_s']:9.2f}   {b['per_image_s']:14.3f}   1.000",
        f"  Ray pipeline (local, in-process)     {y['startup_s']:9.2f}   {y['per_image_s']:14.3f}"
        f"   {1 + o['overhead']:.3f} ({o['overhead']:+.1%})",
        f"  masks byte-identical: {o['identical_masks']}/{o['images']}",
    ]
    s = r.get("scaling")
    if s:
        lines += [
            "",
            "scaling, two-node local cluster (1 CPU per node)   workers   images/s   nodes placed/used"
            "   efficiency",
            f"  {'':48}{1:>7}   {s['one']['images_per_s']:8.3f}   {_nodes(s['one']):>17}",
            f"  {'':48}{2:>7}   {s['two']['images_per_s']:8.3f}   {_nodes(s['two']):>17}   "
            f"{s['efficiency']:.1%}",
        ]
    return "\n".join(lines)


def _nodes(run: dict[str, Any]) -> str:
    return f"{run['nodes']}/{run['nodes_used']}"


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.config.typed import parse_override

    ap = argparse.ArgumentParser(prog="samsr benchmark pipeline", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--config", default=None, help="job config (default: configs/demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override; repeatable")
    ap.add_argument("--method", default=None, help="shortcut for --set method=...")
    ap.add_argument("--model", default=None, help="shortcut for --set model.name=...")
    ap.add_argument("--checkpoint", default=None, help="shortcut for --set model.checkpoint=...")
    ap.add_argument("--images", type=int, default=12, help="synthetic images (default 12)")
    ap.add_argument("--size", type=lambda t: parse_size(t, minimum=32), default=(1024, 768),
                    help="WIDTHxHEIGHT (default 1024x768)")
    ap.add_argument("--cores", type=int, default=1, help="cores both overhead runs are pinned to (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the two-node scaling run")
    ap.add_argument("--workdir", default=None, help="keep inputs and outputs here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.images < 3:
        ap.error("--images must be at least 3 (steady state needs images after the first two)")
    sets = list(args.set)
    shortcuts = ((args.method, "method"), (args.model, "model.name"), (args.checkpoint, "model.checkpoint"))
    for flag, key in shortcuts:
        if flag is not None:
            sets.append(f"{key}={flag}")
    try:
        overrides = [parse_override(s) for s in sets]
    except ValueError as e:
        ap.error(str(e))
    result = run(args.config, overrides, args.images, args.size, args.cores, args.threads,
                 scaling=not args.no_scaling, workdir=args.workdir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
