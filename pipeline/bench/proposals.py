"""Benchmark: the ``regions`` proposals next to the refiner they feed, on the same images.

For each image (default: the bundled demo photographs, 1600x1200, or any prefix-layout folder
with ``--data``), side by side in one process with the same thread count:

- ``regions``: `pipeline.sam.propose` with `RegionGenerator` (working size 1024, the config's
  defaults): segmentation, hierarchy, masks, colour map;
- ``refiner``: the shipped light CRM (``crm_mnv2``) with the demo config's settings
  (``scales: [1.0]``, ``align: 8``) on the full-size image and its coarse mask.

Prints seconds per image (process CPU time: on a shared machine, with one thread, the time the
work takes on an idle core; and wall time) and the ratio regions / refiner.

    samsr benchmark proposals --threads 1
    python -m pipeline.bench.proposals --data samples/demo --repeats 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "run"]

ROOT = Path(__file__).resolve().parents[2]


def _timed(fn) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def run(data: str = str(ROOT / "samples" / "demo"), checkpoint: str | None = None, threads: int = 1,
        repeats: int = 1, limit: int | None = None) -> dict[str, Any]:
    from pipeline.io import list_samples, load_sample
    from pipeline.models import build_model
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.sam import propose
    from pipeline.sam.regions import RegionGenerator, RegionSettings

    torch.set_num_threads(threads)
    checkpoint = checkpoint or str(ROOT / "pipeline" / "weights" / "crm_mnv2.pt")
    options = RefineOptions(scales=(1.0,), align=8)
    model = prepare_model(build_model("crm_mnv2", checkpoint), options)
    generator = RegionGenerator(RegionSettings())
    refs = list(list_samples(data))[:limit]
    rows = []
    for ref in refs:
        sample = load_sample(ref, load_gt=False)
        image, coarse = np.array(sample.image), np.array(sample.coarse)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(repeats):
            props, wall, cpu = _timed(lambda: propose(generator, image, sample.key))  # noqa: B023
            best["regions"] = min(best.get("regions", (wall, cpu)), (wall, cpu))
            with torch.inference_mode():
                _, wall, cpu = _timed(lambda: refine(model, image, coarse, options=options))  # noqa: B023
            best["refiner"] = min(best.get("refiner", (wall, cpu)), (wall, cpu))
        rows.append({"key": sample.key, "size": f"{image.shape[1]}x{image.shape[0]}",
                     "masks": len(props.masks),
                     "regions_s": best["regions"][0], "regions_cpu_s": best["regions"][1],
                     "refiner_s": best["refiner"][0], "refiner_cpu_s": best["refiner"][1],
                     "stats": dict(generator.last_stats)})
    print(f"regions proposals (working size 1024, defaults) vs crm_mnv2 refine (scales [1.0], align 8), "
          f"{threads} thread(s), best of {repeats}")
    print(f"{'image':<16}{'size':>11}{'masks':>7}{'regions s':>11}{'(cpu)':>8}{'refiner s':>11}"
          f"{'(cpu)':>8}{'ratio (cpu)':>13}")
    for r in rows:
        print(f"{r['key']:<16}{r['size']:>11}{r['masks']:>7}{r['regions_s']:>11.2f}"
              f"{r['regions_cpu_s']:>8.2f}{r['refiner_s']:>11.2f}{r['refiner_cpu_s']:>8.2f}"
              f"{r['regions_cpu_s'] / r['refiner_cpu_s']:>13.2f}")
    reg = float(np.mean([r["regions_cpu_s"] for r in rows]))
    ref = float(np.mean([r["refiner_cpu_s"] for r in rows]))
    print(f"mean CPU time: regions {reg:.2f} s, refiner {ref:.2f} s, ratio {reg / ref:.2f}")
    return {"rows": rows, "regions_cpu_s": reg, "refiner_cpu_s": ref, "ratio": reg / ref}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="samsr benchmark proposals", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "samples" / "demo"),
                   help="prefix-layout folder (default: the demo samples)")
    p.add_argument("--checkpoint", default=None, help="crm_mnv2 weights (default: the shipped ones)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    a = p.parse_args(argv)
    return run(a.data, a.checkpoint, a.threads, a.repeats, a.limit)


if __name__ == "__main__":
    main()
