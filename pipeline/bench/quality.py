"""`samsr benchmark quality`: does refinement make masks better, on held-out data, per coarse kind?

    samsr benchmark quality --data DATA/holdout --data DATA/holdout_regions

Its defaults measure what ``make demo`` runs (``configs/demo.yaml``: samsr-v2.1 with the
``regions`` proposals, the shipped ``samsr_v21_mnv2``, one scale, align 8, tta rot180, edge check
0.25, the area-keeping line level); the do-no-harm acceptance is measured by
``samsr benchmark trust``. ``--method crm --model crm_mnv2 --weights pipeline/weights/crm_mnv2.pt
--tta none --edge-check off --threshold 0.5`` measures the official-style light CRM.

The data is any prefix-layout set with ground truth (``NAME_im`` / ``NAME_gt``; its ``_seg`` masks
are ignored). The coarse masks are made from the truth here, seeded per (key, kind), so every
method sees the same inputs (DESIGN §3b):

- ``lowres8`` / ``lowres16``: a low-resolution annotation: truth downsampled 8x / 16x with area
  averaging, upsampled bilinearly, thresholded at 128;
- ``perturbed``: a CRM-style coarse mask (a segmentation model's output): the truth at long side
  512 is dilated/eroded on random boxes (:func:`pipeline.train.perturb.perturb_until`) until its
  IoU with the truth falls in [0.75, 0.9], then upsampled bilinearly and thresholded at 128;
- ``identity``: the truth itself (a refiner should leave it alone).

Other factors and a staircase variant can be asked for by name (``--kinds``; not in the default
set): ``lowresN`` (N = 2..64, as above) and ``blockyN``: the truth downsampled N x with area
averaging, thresholded at 128, upsampled by nearest neighbour — the staircase of a label map or of
a mask scaled up without interpolation.

Per kind it prints coarse vs refined dataset IoU (total intersection / total union), mean mBA,
mean Boundary IoU, the share of images made worse (refined mBA < coarse mBA), the mean signed
area change (|mask| - |truth|) / |truth|, all in percent, and the mean edge offset in pixels
(:func:`pipeline.train.regions.edge_offset`: where the image's edges lie relative to the mask's
boundary, > 0 outside; a refiner that erodes from real edges shows > 0; the truth's own offset in
brackets). With several ``--data`` folders, a table per folder follows the combined one (and
``by_source`` in the JSON). This is a script, not a timed test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["KINDS", "check_kind", "parse_kinds", "make_coarse", "binary_mask", "evaluate", "summarise",
           "format_table", "main"]

KINDS = ("lowres8", "lowres16", "perturbed", "identity")
_FACTOR_KIND = re.compile(r"(lowres|blocky)(\d+)")
FACTORS = (2, 64)  # the factors lowresN / blockyN accept
PERTURB_SIDE = 512
PERTURB_IOU = (0.75, 0.9)


def _rng(key: str, kind: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}:{kind}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _lowres(gt: np.ndarray, factor: int, blocky: bool = False) -> np.ndarray:
    h, w = gt.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = cv2.resize(gt, size, interpolation=cv2.INTER_AREA)
    if blocky:  # a label map's staircase: threshold at low resolution, replicate pixels
        small = np.where(small > 128, 255, 0).astype(np.uint8)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(up > 128, 255, 0).astype(np.uint8)


def check_kind(kind: str) -> str:
    """``kind`` if it names a coarse kind (``KINDS``, ``lowresN``, ``blockyN`` with N in
    ``FACTORS``); else ValueError naming it and what is known."""
    m = _FACTOR_KIND.fullmatch(kind)
    if kind in KINDS or (m and FACTORS[0] <= int(m.group(2)) <= FACTORS[1]):
        return kind
    raise ValueError(f"unknown coarse kind {kind!r}; known: {', '.join(KINDS)}, "
                     f"lowresN or blockyN with N = {FACTORS[0]}..{FACTORS[1]}")


def parse_kinds(text: str) -> list[str]:
    """Comma-separated coarse kinds, each checked by :func:`check_kind` (ValueError naming it)."""
    return [check_kind(k.strip()) for k in text.split(",") if k.strip()]


def _perturbed(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from pipeline.train.perturb import mask_iou, perturb_until

    h, w = gt.shape
    s = min(1.0, PERTURB_SIDE / max(h, w))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    small = np.where(cv2.resize(gt, size, interpolation=cv2.INTER_AREA) > 128, 255, 0).astype(np.uint8)
    best = small
    for _ in range(20):
        target = float(rng.uniform(*PERTURB_IOU))
        cand = perturb_until(small, small, target, rng)
        if PERTURB_IOU[0] <= mask_iou(cand, small) <= PERTURB_IOU[1]:
            best = cand
            break
        best = cand
    up = cv2.resize(best, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(up > 128, 255, 0).astype(np.uint8)


def make_coarse(gt: np.ndarray, kind: str, key: str, seed: int = 0) -> np.ndarray:
    """The coarse mask of ``kind`` (see module docstring) for gt (H, W) uint8: (H, W) uint8 {0, 255}."""
    check_kind(kind)
    g = np.where(gt > 128, 255, 0).astype(np.uint8)
    if kind == "identity":
        return g
    if kind == "perturbed":
        return _perturbed(g, _rng(key, kind, seed))
    m = _FACTOR_KIND.fullmatch(kind)
    return _lowres(g, int(m.group(2)), blocky=m.group(1) == "blocky")


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 {0, 255} of a probability map (> 0.5) or a uint8 mask (> 128), as judged here."""
    return np.where(mask > (0.5 if mask.dtype.kind == "f" else 128), 255, 0).astype(np.uint8)


def _area_change(mask: np.ndarray, gt: np.ndarray) -> float:
    from pipeline.metrics import binarize, resize_to

    truth = int(np.count_nonzero(binarize(gt)))
    pred = int(np.count_nonzero(binarize(resize_to(mask, gt.shape))))
    return (pred - truth) / truth if truth else 0.0


def _summary(rows: list[dict[str, Any]], which: str) -> dict[str, float | None]:
    from pipeline.metrics import aggregate_metrics

    agg = aggregate_metrics([r[which] for r in rows])

    def pct(v: float | None) -> float | None:
        return None if v is None else 100 * v

    offsets = [r[which]["edge_offset"] for r in rows if np.isfinite(r[which].get("edge_offset", np.nan))]
    return {"iou": pct(agg["dataset_iou"]), "mba": pct(agg["mean_mba"]), "biou": pct(agg["mean_biou"]),
            "area": 100 * float(np.mean([r[which]["area_change"] for r in rows])) if rows else None,
            "edge_offset": float(np.mean(offsets)) if offsets else None}


def _shrink(image: np.ndarray, truth: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Image (area interpolation) and truth (area, then > 128) with long side <= max_side."""
    s = 1.0 if not max_side else max_side / max(image.shape[:2])
    if s >= 1:
        return image, truth
    size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
    small = cv2.resize(truth, size, interpolation=cv2.INTER_AREA)
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, np.where(small > 128, 255, 0).astype(np.uint8)


def evaluate(model, refs: Sequence[Any], kinds: Sequence[str] = KINDS, options=None, seed: int = 0,
             log: bool = True, device: str = "cpu", max_side: int | None = None, method: str = "crm",
             proposer: Any = None, working_size: int = 1024,
             v1_kwargs: dict[str, float] | None = None,
             sources: Sequence[str] | None = None, save_masks: str | None = None) -> dict[str, Any]:
    """Refine every sample of ``refs`` once per coarse kind. The refs' *mask* file is the truth
    (``list_samples(uri, "prefix", mask_suffix="_gt.png")``), resized to the image if it differs.
    ``max_side`` first shrinks image and truth to that long side (photographs of everyday size);
    the model runs on ``device``.

    ``method``: ``crm`` (the model sees image + coarse), ``samsr-v2.1`` (+ the colour map of
    ``proposer``'s masks, a 7-channel model), ``samsr-v1`` (the coarse mask merged with the
    proposals by `pipeline.sam.merge_v1` first, unless a gate fires). Proposals are made once per
    image (at ``working_size``, colour seed 0) and shared by its coarse kinds, as in the pipeline.

    ``sources``: a label per ref (e.g. the data folder it came from), kept in each per-image row
    as ``source`` so that :func:`summarise` can split the result.

    ``save_masks``: a local folder; each image's truth (``KEY_truth.png``, at the size judged),
    coarse and refined masks (``KEY_KIND_coarse.png`` / ``KEY_KIND_refined.png``, 0/255; KEY escaped
    by :func:`pipeline.io.keys.safe_key`) go there for looking at single images.

    Returns {"n", "kinds": {kind: {"coarse": summary, "refined": summary, "worse": percent,
    "seconds": float}}, "per_image": [...]} where a summary is {"iou", "mba", "biou", "area"}.
    """
    from pipeline.io import load_sample
    from pipeline.io.keys import safe_key
    from pipeline.metrics import image_metrics
    from pipeline.refine import RefineOptions, prepare_model, refine
    from pipeline.sam import merge_v1, propose
    from pipeline.train.regions import edge_offset

    if method != "crm" and proposer is None:
        raise ValueError(f"method {method}: needs a proposal source")
    options = options or RefineOptions()
    model = prepare_model(model.eval(), options).to(device)
    if sources is not None and len(sources) != len(refs):
        raise ValueError(f"sources: {len(sources)} labels for {len(refs)} refs")
    per_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    if save_masks:
        os.makedirs(save_masks, exist_ok=True)
    for i, ref in enumerate(refs):
        s = load_sample(ref, load_gt=False)
        image, truth = _shrink(s.image, s.coarse, max_side)
        props = None if method == "crm" else propose(proposer, image, s.key, working_size=working_size)
        truth_offset = edge_offset(image, truth)
        if save_masks:
            name_of = safe_key(s.key)  # keys may hold "/" or other characters a file name cannot
            cv2.imwrite(os.path.join(save_masks, f"{name_of}_truth.png"), truth)
        for kind in kinds:
            coarse = make_coarse(truth, kind, s.key, seed)
            t = time.perf_counter()
            gate = None
            if method == "samsr-v2.1":
                prob = refine(model, image, coarse, props.colour_map, options=options, device=device)
            elif method == "samsr-v1":
                merged, gate = merge_v1(coarse, props.masks, **(v1_kwargs or {}))
                prob = refine(model, image, merged, options=options, device=device)
            else:
                prob = refine(model, image, coarse, options=options, device=device)  # numpy: synchronised
            row = {"key": s.key, "kind": kind, "size": list(truth.shape), "gate": gate,
                   "truth_edge_offset": truth_offset, "seconds": time.perf_counter() - t}
            if sources is not None:
                row["source"] = sources[i]
            for name, mask in (("coarse", coarse), ("refined", prob)):
                row[name] = image_metrics(mask, truth)
                row[name]["area_change"] = _area_change(mask, truth)
                binary = binary_mask(mask)
                row[name]["edge_offset"] = edge_offset(image, binary)
                if save_masks:
                    cv2.imwrite(os.path.join(save_masks, f"{name_of}_{kind}_{name}.png"), binary)
            per_kind[kind].append(row)
            if log:
                c, r = row["coarse"], row["refined"]
                print(f"[quality] {s.key} {kind:<9} "
                      f"iou {100 * (c['iou'] or 0):6.2f} -> {100 * (r['iou'] or 0):6.2f}"
                      f"  mba {100 * (c['mba'] or 0):6.2f} -> {100 * (r['mba'] or 0):6.2f}", flush=True)
    return summarise([r for k in kinds for r in per_kind[k]], kinds)


def summarise(per_image: Sequence[dict[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    """The per-kind summary of :func:`evaluate` from its per-image rows (all of them, or a subset,
    e.g. one source's): {"n", "kinds", "per_image"}; ``n`` counts the distinct images."""
    rows_of = {k: [r for r in per_image if r["kind"] == k] for k in kinds}
    n = max((len(v) for v in rows_of.values()), default=0)
    out: dict[str, Any] = {"n": n, "kinds": {}, "per_image": [r for k in kinds for r in rows_of[k]]}
    for kind in kinds:
        rows = rows_of[kind]
        scored = [r for r in rows if r["coarse"]["mba"] is not None and r["refined"]["mba"] is not None]
        worse = sum(r["refined"]["mba"] < r["coarse"]["mba"] for r in scored)
        out["kinds"][kind] = {"coarse": _summary(rows, "coarse"), "refined": _summary(rows, "refined"),
                              "worse": 100 * worse / len(scored) if scored else None,
                              "seconds": float(sum(r["seconds"] for r in rows)),
                              "truth_edge_offset": _mean_finite([r["truth_edge_offset"] for r in rows])}
    return out


def _mean_finite(values: Sequence[float]) -> float | None:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(result: dict[str, Any]) -> str:
    """Markdown table, one row per coarse kind: coarse -> refined for each metric (percent)."""
    lines = ["| coarse kind | n | dataset IoU | mean mBA | mean Boundary IoU | images worse (mBA) "
             "| area change vs truth | edge offset px (truth) | refine s/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, k in result["kinds"].items():
        c, r = k["coarse"], k["refined"]
        n = result["n"]
        gain = {m: None if c[m] is None or r[m] is None else r[m] - c[m] for m in ("iou", "mba", "biou")}
        cells = [f"{_f(c[m])} -> {_f(r[m])} ({_f(gain[m], '+.2f')})" for m in ("iou", "mba", "biou")]
        area = f"{_f(c['area'], '+.2f')}% -> {_f(r['area'], '+.2f')}%"
        edge = (f"{_f(c.get('edge_offset'), '+.2f')} -> {_f(r.get('edge_offset'), '+.2f')} "
                f"({_f(k.get('truth_edge_offset'), '+.2f')})")
        lines.append(f"| {kind} | {n} | " + " | ".join(cells) + f" | {_f(k['worse'], '.0f')}% | {area} "
                     f"| {edge} | {k['seconds'] / max(1, n):.1f} |")
    return "\n".join(lines)


def _margin(text: str) -> float | None:
    return None if text.lower() in ("off", "none") else float(text)


def _level(text: str) -> float | str:
    return text if text == "area" else float(text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="samsr benchmark quality", description=__doc__.split("\n")[0],
                                 epilog="Coarse kinds: " + ", ".join(KINDS) + "; also lowresN, blockyN "
                                 f"(N = {FACTORS[0]}..{FACTORS[1]}; blocky: nearest-neighbour staircase)")
    ap.add_argument("--data", action="append", required=True, metavar="URI",
                    help="prefix-layout set with _im/_gt files (repeatable; any fsspec URI)")
    ap.add_argument("--model", default="samsr_v21_mnv2", help="registry model (default samsr_v21_mnv2)")
    ap.add_argument("--method", default="samsr-v2.1", choices=["crm", "samsr-v1", "samsr-v2.1"],
                    help="samsr-v2.1 (default: a samsr_v21 model + proposal colour maps), crm, or samsr-v1 "
                    "(coarse mask merged with the proposals, then the CRM model)")
    ap.add_argument("--proposals", default="regions", choices=["regions", "sam"],
                    help="proposal source of the samsr methods (default regions, config defaults)")
    ap.add_argument("--sam-model-type", default="vit_h", help="SAM type for --proposals sam")
    ap.add_argument("--sam-checkpoint", default=None, help="SAM weights for --proposals sam")
    ap.add_argument("--weights", default="pipeline/weights/samsr_v21_mnv2.pt", help="weights (path/URL)")
    ap.add_argument("--scales", default="1.0", help="cascade scales, comma-separated (default 1.0)")
    ap.add_argument("--decode", default="full", help="decode mode: full, strided, bbox, contour")
    ap.add_argument("--roi-margin", type=int, default=None,
                    help="RefineOptions.roi_margin of the bbox/contour modes "
                    "(px; default max(16, 3%% of the long side))")
    ap.add_argument("--align", type=int, default=8, help="RefineOptions.align (default 8; 1 = official)")
    ap.add_argument("--gate", type=float, default=0.0, help="RefineOptions.gate (default 0: off)")
    ap.add_argument("--tta", default="rot180", choices=["none", "rot180", "flip4"],
                    help="RefineOptions.tta (default rot180)")
    ap.add_argument("--edge-check", type=_margin, default=0.25, metavar="MARGIN",
                    help="RefineOptions.edge_check (default 0.25; off: none): keep a refined change only "
                    "where the new line crosses >= (1 + MARGIN) x the mean colour contrast of the old one")
    ap.add_argument("--threshold", type=_level, default="area",
                    help="RefineOptions.threshold: the line's probability level, or area (default: the level "
                    "keeping the coarse mask's area)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"coarse kinds (default {','.join(KINDS)})")
    ap.add_argument("--limit", type=int, default=None, help="at most this many samples per --data")
    ap.add_argument("--max-side", type=int, default=None,
                    help="shrink each image and truth to this long side first (default: as stored)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N] (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the perturbed kind")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the full result (per image) here")
    ap.add_argument("--save-masks", default=None, metavar="DIR",
                    help="write each image's truth, coarse and refined masks (PNG) to this local folder")
    args = ap.parse_args(argv)

    import torch

    from pipeline.io import list_samples
    from pipeline.models import build_model
    from pipeline.refine import RefineOptions

    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as e:
        ap.error(f"--kinds: {e}")
    options = RefineOptions(scales=tuple(float(v) for v in args.scales.split(",")), decode=args.decode,
                            align=args.align, tta=args.tta, gate=args.gate, roi_margin=args.roi_margin,
                            edge_check=args.edge_check, threshold=args.threshold)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the coarse masks are made from the truth, so any _seg files are not needed (nor read)
    listed = [(uri, r) for uri in args.data
              for r in list_samples(uri, "prefix", mask_suffix="_gt.png")[: args.limit]]
    refs, sources = [r for _, r in listed], [uri for uri, _ in listed]
    if not refs:
        ap.error(f"no samples found in {args.data}")
    model = build_model(args.model, checkpoint=args.weights)
    proposer = None
    if args.method != "crm":
        if args.proposals == "regions":
            from pipeline.sam.regions import RegionGenerator

            proposer = RegionGenerator()
        else:
            from pipeline.sam import FastMaskGenerator, build_sam

            if not args.sam_checkpoint:
                ap.error("--proposals sam: needs --sam-checkpoint")
            proposer = FastMaskGenerator(build_sam(args.sam_model_type, args.sam_checkpoint))
    t0 = time.time()
    result = evaluate(model, refs, kinds, options, args.seed, device=args.device, max_side=args.max_side,
                      method=args.method, proposer=proposer, sources=sources,
                      save_masks=args.save_masks)
    result.update({"max_side": args.max_side, "device": args.device, "method": args.method,
                   "proposals": args.proposals if args.method != "crm" else None,
                   "model": args.model, "weights": args.weights, "scales": list(options.scales),
                   "decode": options.decode, "align": options.align, "tta": options.tta,
                   "gate": options.gate, "edge_check": options.edge_check, "roi_margin": options.roi_margin,
                   "threshold": options.threshold,
                   "data": args.data,
                   "wall_s": time.time() - t0})
    print(f"\nmethod {args.method}" + (f" ({args.proposals} proposals)" if proposer else "")
          + f", model {args.model} weights {args.weights} scales {list(options.scales)} "
          f"decode {options.decode}"
          + (f" (margin {options.roi_margin} px) " if options.roi_margin is not None else " ") +
          f"align {options.align}, tta {options.tta}, gate {options.gate:g}, edge check "
          f"{'off' if options.edge_check is None else f'{options.edge_check:g}'}, "
          f"threshold {options.threshold}; "
          f"{result['n']} images from {', '.join(args.data)}"
          + (f", long side <= {args.max_side}" if args.max_side else ""))
    print(format_table(result))
    if len(args.data) > 1:  # each source alone: composites and real-edge regions can disagree
        result["by_source"] = {}
        for uri in args.data:
            part = summarise([r for r in result["per_image"] if r["source"] == uri], kinds)
            result["by_source"][uri] = {"n": part["n"], "kinds": part["kinds"]}
            print(f"\n{uri} alone ({part['n']} images):")
            print(format_table(part))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
