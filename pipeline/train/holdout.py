"""Held-out evaluation of trained weights: coarse vs refined dataset IoU and mean mBA.

    python -m pipeline.train.holdout --weights pipeline/weights/crm_mnv2.pt \\
        --data /work/cache/demo_data/holdout --model crm_mnv2 [--decode full] [--json out.json]

The data is any prefix-layout set with ground truth; its ``_seg`` masks are the coarse input
(for the shipped held-out set: the ground truth downsampled 8x with area averaging, upsampled
bilinearly when loaded). Refinement is :func:`pipeline.refine.refine`, metrics
:mod:`pipeline.metrics` (dataset IoU = total intersection / total union; mBA = mean over images).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["evaluate_holdout", "format_table", "main"]


def evaluate_holdout(model: torch.nn.Module, data_uri: str, decode: str = "full",
                     limit: int | None = None, log: bool = True,
                     scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)) -> dict[str, Any]:
    """Refine every sample of ``data_uri`` and score coarse and refined masks against gt.

    Returns {"n", "coarse": {"iou", "mba", "biou"}, "refined": {...}, "seconds", "per_image": [...]}
    with IoU as dataset IoU and mBA / BIoU as means over images where defined (percent scale 0-100).
    """
    from pipeline.io import list_samples, load_sample
    from pipeline.metrics import dataset_iou, image_metrics
    from pipeline.refine import RefineOptions, prepare_model, refine

    options = RefineOptions(decode=decode, scales=tuple(scales))
    model = prepare_model(model.eval(), options)
    refs = list_samples(data_uri, layout="prefix")[:limit]
    rows, t0 = [], time.time()
    for ref in refs:
        s = load_sample(ref)
        if s.gt is None:
            raise ValueError(f"holdout sample {s.key!r}: no ground truth")
        t = time.time()
        with torch.inference_mode():
            prob = refine(model, s.image, s.coarse, options=options)
        row = {"key": s.key, "size": list(s.image.shape[:2]), "refine_s": time.time() - t,
               "coarse": image_metrics(s.coarse, s.gt), "refined": image_metrics(prob, s.gt)}
        rows.append(row)
        if log:
            print(f"[holdout] {s.key} {s.image.shape[1]}x{s.image.shape[0]} "
                  f"iou {row['coarse']['iou']:.4f}->{row['refined']['iou']:.4f} "
                  f"mba {row['coarse']['mba']:.4f}->{row['refined']['mba']:.4f} ({row['refine_s']:.0f}s)",
                  flush=True)

    def summary(which: str) -> dict[str, float | None]:
        ms = [r[which] for r in rows]
        iou = dataset_iou([m["intersection"] for m in ms], [m["union"] for m in ms])
        mbas = [m["mba"] for m in ms if m["mba"] is not None]
        bious = [m["biou"] for m in ms if m["biou"] is not None]
        return {"iou": None if iou is None else 100 * iou,
                "mba": 100 * sum(mbas) / len(mbas) if mbas else None,
                "biou": 100 * sum(bious) / len(bious) if bious else None}

    return {"n": len(rows), "decode": decode, "scales": list(scales), "coarse": summary("coarse"),
            "refined": summary("refined"), "seconds": time.time() - t0, "per_image": rows}


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: rows coarse / refined / gain, columns IoU, mBA, BIoU (percent)."""
    c, r = result["coarse"], result["refined"]
    lines = ["| masks | dataset IoU | mean mBA | mean Boundary IoU |", "|---|---|---|---|"]
    for name, m in (("coarse (gt downsampled 8x)", c), ("refined", r)):
        lines.append(f"| {name} | {m['iou']:.2f} | {m['mba']:.2f} | {m['biou']:.2f} |")
    gains = " | ".join(f"{r[k] - c[k]:+.2f}" for k in ("iou", "mba", "biou"))
    lines.append(f"| gain | {gains} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.train.holdout", description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="trained weights (path/URL)")
    ap.add_argument("--data", required=True, help="prefix-layout set with _im/_seg/_gt files")
    ap.add_argument("--model", default="crm_mnv2")
    ap.add_argument("--decode", default="full", help="RefineOptions.decode (default full, the official)")
    ap.add_argument("--scales", default="0.125,0.25,0.5,1.0", help="cascade scales (default: official)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)
    from pipeline.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.model, checkpoint=args.weights)
    scales = tuple(float(v) for v in args.scales.split(","))
    result = evaluate_holdout(model, args.data, args.decode, args.limit, scales=scales)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
