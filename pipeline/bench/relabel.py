"""Benchmark: ``samsr relabel`` at dataset scale -- planning time and memory per worker.

``plan``: a synthetic COCO file (default 10,000 images, 100,000 polygon annotations of 24 points,
made at 1/4 of the images' size) is written to a temporary folder and planned exactly as a job
plans it (``pipeline.relabel.plan.plan_relabel``: read, parse, index, one item per image).
Prints the file size and the seconds for the read + parse and for the whole plan.

``memory`` (``--memory``): one large image (default 6000x4000) with N instances (default 25 and
100, side by side in one process), every instance refined by the shipped light CRM through
``pipeline.relabel.instances.relabel_instances`` (windows at full resolution, one at a time).
A sampling thread records the process's peak resident memory above the level before the run;
bounded memory means the peak does not grow with the number of instances.

    samsr benchmark relabel
    samsr benchmark relabel --images 2000 --annotations 20000 --memory --instances 10,40
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "synthetic_coco", "bench_plan", "bench_memory"]

ROOT = Path(__file__).resolve().parents[2]


def synthetic_coco(images: int, annotations: int, points: int = 24, size: tuple[int, int] = (1500, 1000),
                   seed: int = 0) -> dict:
    """A COCO dict: ``images`` records of ``size`` (w, h), ``annotations`` random star-shaped
    polygons of ``points`` vertices spread over them, 80 categories."""
    rng = np.random.default_rng(seed)
    w, h = size
    recs = [{"id": i + 1, "file_name": f"{i:07d}.jpg", "width": w, "height": h} for i in range(images)]
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    anns = []
    image_ids = rng.integers(1, images + 1, annotations)
    centres = rng.uniform(0.1, 0.9, (annotations, 2)) * (w, h)
    radii = rng.uniform(5, 0.08 * min(w, h), annotations)
    wobble = rng.uniform(0.7, 1.0, (annotations, points))
    for k in range(annotations):
        xs = centres[k, 0] + radii[k] * wobble[k] * np.cos(t)
        ys = centres[k, 1] + radii[k] * wobble[k] * np.sin(t)
        poly = np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()
        anns.append({"id": k + 1, "image_id": int(image_ids[k]), "category_id": int(k % 80) + 1, "iscrowd": 0,
                     "segmentation": [poly], "area": 0.0, "bbox": [0, 0, 0, 0]})
    cats = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(80)]
    return {"images": recs, "annotations": anns, "categories": cats}


def bench_plan(images: int, annotations: int, points: int) -> dict[str, Any]:
    from pipeline.config import config_from_dict
    from pipeline.relabel.plan import plan_relabel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances.json"
        path.write_text(json.dumps(synthetic_coco(images, annotations, points)))
        size = path.stat().st_size
        cfg = config_from_dict({"input": {"uri": str(Path(tmp) / "images")},
                                "output": {"prefix": str(Path(tmp) / "o")}, "relabel": {"coco": str(path)}})
        t0 = time.perf_counter()
        json.loads(path.read_bytes())
        parse = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = plan_relabel(cfg)
        total = time.perf_counter() - t0
    return {"images": images, "annotations": annotations, "json_mb": size / 2**20, "parse_s": parse,
            "plan_s": total, "items": len(plan.items)}


class _PeakRSS(threading.Thread):
    def __init__(self, every: float = 0.02) -> None:
        import psutil

        super().__init__(daemon=True)
        self.proc, self.every = psutil.Process(), every
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)


def _scene(n: int, height: int, width: int, factor: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    import cv2

    rng = np.random.default_rng(seed)
    small = cv2.GaussianBlur(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8), (0, 0), 3)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    anns = []
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for k in range(n):
        cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
        r = rng.uniform(20, 250)
        cv2.circle(image, (int(cx), int(cy)), int(r), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        xs, ys = (cx + r * np.cos(t)) / factor, (cy + r * np.sin(t)) / factor
        anns.append({"id": k + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": [np.stack([xs, ys], 1).ravel().round(2).tolist()]})
    return image, anns


def bench_memory(counts: Sequence[int], height: int, width: int, factor: int, threads: int) -> list[dict]:
    import torch

    from pipeline.models import build_model
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.relabel.instances import relabel_instances
    from pipeline.relabel.stages import window_refiner

    torch.set_num_threads(threads)
    options = RefineOptions(scales=(1.0,), align=8)
    weights = str(ROOT / "pipeline" / "weights" / "crm_mnv2.pt")
    model = prepare_model(build_model("crm_mnv2", weights), options)
    out = []
    for n in counts:
        image, anns = _scene(n, height, width, factor)

        def fn(crop, coarse, colours):
            with torch.inference_mode():
                return refine(model, crop, coarse, options=options)

        run = window_refiner(fn, image, None)  # what the relabel actors run per window

        meter = _PeakRSS()
        meter.start()
        t0 = time.perf_counter()
        _, recs = relabel_instances(anns, {1}, (height // factor, width // factor), (height, width), run)
        wall = time.perf_counter() - t0
        meter.stop.set()
        meter.join()
        ok = sum(r["status"] == "ok" for r in recs)
        out.append({"instances": n, "ok": ok, "wall_s": wall, "s_per_instance": wall / max(1, n),
                    "peak_above_start_mb": (meter.peak - meter.base) / 2**20,
                    "image_mb": image.nbytes / 2**20})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="samsr benchmark relabel", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--annotations", type=int, default=100_000)
    p.add_argument("--points", type=int, default=24, help="vertices per polygon")
    p.add_argument("--memory", action="store_true", help="also measure memory per worker on one large image")
    p.add_argument("--instances", default="25,100", help="instance counts for --memory (comma-separated)")
    p.add_argument("--size", default="6000x4000", help="image size WxH for --memory")
    p.add_argument("--factor", type=int, default=8, help="annotation downscale for --memory")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    r = bench_plan(args.images, args.annotations, args.points)
    print(f"plan: {r['images']} images, {r['annotations']} annotations, JSON {r['json_mb']:.1f} MB: "
          f"read+parse {r['parse_s']:.2f} s, whole plan {r['plan_s']:.2f} s ({r['items']} items)")
    if args.memory:
        w, h = (int(v) for v in args.size.lower().split("x"))
        for m in bench_memory([int(v) for v in args.instances.split(",")], h, w, args.factor, args.threads):
            print(f"memory: {w}x{h} image ({m['image_mb']:.0f} MB decoded), {m['instances']} instances "
                  f"({m['ok']} ok): peak RSS +{m['peak_above_start_mb']:.0f} MB above the start, "
                  f"{m['wall_s']:.1f} s ({m['s_per_instance']:.2f} s per instance)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
