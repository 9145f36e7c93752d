"""Fit and measure the per-change trust model of ``refine.accept: regions`` offline.

    python -m jobs.fit_region_trust refine --data B/val --out CACHE/val        # once per set (slow)
    python -m jobs.fit_region_trust refine --data B/val --out CACHE/val_out1 --truth-offset 1
    python -m jobs.fit_region_trust fit --val CACHE/val CACHE/val_out1 --interactions convention --thick \
        --gate --out v3.json                      # the model of pipeline/weights/trust_regions_v4.json
    python -m jobs.fit_region_trust fit --val CACHE/train_full_out0 CACHE/train_regions_full_out1 \
        --interactions convention --thick --gate --base v3.json --large-from-side 1536 \
        --out trust_regions_v4.json               # ... and its large-image model (full-size train split)
    python -m jobs.fit_region_trust report --data CACHE/test CACHE/test_out1 --model trust_regions.json

The arrays (``refine`` and the per-folder cache) come from :mod:`jobs.region_trust_arrays`.
``refine`` refines every sample of a prefix-layout set with ground truth once per coarse kind of
``samsr benchmark trust`` (the config's settings, default ``configs/demo.yaml``; the same code path:
:class:`pipeline.refine.loaded.LoadedRefiner`, the proposal worker, ``refine_detailed``) and saves,
per sample, ``KEY.npz``: image, truth, and per kind the coarse mask, the refined probabilities
before the edge check, the TTA spread and the seconds. It resumes (existing files are skipped);
``--shuffle`` walks the samples in a seeded order so that any prefix is a random subset, and
``--reverse`` walks that order backwards (a second worker on the same folder).

Everything else is offline and fast: each output's final mask (the edge check applied again, as
the refiner does), its trust features and image score (:mod:`pipeline.refine.trust`), its changes
and their features (:func:`changes_of`) and, from the truth, each
change's label (taking the refined values makes more of its pixels right) are cached in
``FOLDER/changes.pkl``. ``fit`` fits the logistic model (weighted by |pixels right - pixels wrong| +
0.5, L2-penalised), scores every change out of fold (4 folds grouped by photo) and chooses the
thresholds (``min_score`` for changes 1-3 px wide; with ``--thick`` another for thicker ones; with
``--gate`` the image score below which no change is taken) that keep the most of the lowres16 /
blocky8 / perturbed gain while at most ``--max-worse`` percent of the images of every kind of every
set get worse and no kind's mean mBA falls more than ``--mba-tolerance`` below the coarse one; the
model is then refitted on every row (a JSON file). The policy
(:func:`pipeline.refine.regions_trust.decide_regions`): an output the shipped image-level policy
accepts stays refined whole, one below the gate keeps its coarse mask, otherwise each accepted
change takes the refined values and the rest keep the coarse ones. ``report`` prints, per kind, coarse ->
refined -> policy mBA, images worse, the share of changed pixels kept, the gain kept and the edge
offsets, for the shipped image-level policy and for the per-change one. Fit on one set, report on
another. Results: pipeline/weights/TRUST_CARD.md and docs/experiments.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.region_trust_arrays import load_sets, refine_set
from pipeline.bench.trust import TRUST_KINDS, fit_logistic
from pipeline.refine.regions_trust import (
    REGION_FEATURES,
    THIN_RADIUS,
    Changes,
    RegionTrustModel,
    load_region_model,
)
from pipeline.refine.trust import model_input

__all__ = ["INTERACTIONS", "fit_model", "accepts", "main"]

GAIN_KINDS = ("lowres16", "blocky8", "perturbed")
#: the thresholds searched (1.01: never)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.01)
IMAGE_INPUTS = (
    "log_coarse_detail1",
    "log_coarse_detail",
    "log_coarse_detail4",
    "image_logit",
    "log_shift_px",
    "band_spread",
    "edge_gain",
    "thin_share",
    "band_uncertainty",
    "area_change",
)
#: the inputs added to :data:`REGION_FEATURES` and :data:`IMAGE_INPUTS`, by name: products ``a*b`` of
#: a change's feature with an image input, and (``convention``) the coarse line's side of the edge
#: (``coarse_side``, ``coarse_side2``: the annotator's line convention) with its products
INTERACTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "small": (
        "radius*log_coarse_detail",
        "edge_new_old*log_coarse_detail",
        "log_size*log_coarse_detail4",
        "margin*image_logit",
    ),
    "wide": tuple(
        f"{r}*{i}"
        for r in ("radius", "depth", "log_size", "edge_new_old", "spread", "margin")
        for i in ("log_coarse_detail", "log_coarse_detail4", "image_logit")
    ),
}
INTERACTIONS["convention"] = (
    *INTERACTIONS["wide"],
    "coarse_side",
    "coarse_side2",
    *(f"{r}*coarse_side" for r in ("added", "edge_new_old", "depth", "radius", "margin")),
    "added*coarse_side2",
)


# ---------------------------------------------------------------------------------------------------
# the model


def _image_inputs(o: dict[str, Any]) -> dict[str, float]:
    p = min(max(o["score"], 1e-6), 1 - 1e-6)
    return {
        n: math.log(p / (1 - p)) if n == "image_logit" else model_input(n, o["feats"]) for n in IMAGE_INPUTS
    }


def input_names(inter: Sequence[str]) -> list[str]:
    return [*REGION_FEATURES, *IMAGE_INPUTS, *inter]


def design(outs: Sequence[dict[str, Any]], inter) -> dict[str, np.ndarray]:
    """Rows = changes: X (inputs), y (label), w (weight), photo, out (index of the output)."""
    X, y, w, photo, out = [], [], [], [], []
    for i, o in enumerate(outs):
        if o["n"] == 0:
            continue
        m, image = o["n"], _image_inputs(o)
        values = {**o["rf"], **{k: np.full(m, v) for k, v in image.items()}}
        for name in inter:
            for part in name.split("*"):
                if part not in values:  # an image input beyond IMAGE_INPUTS
                    values[part] = np.full(m, model_input(part, o["feats"]))
        cols = [values[f] for f in (*REGION_FEATURES, *IMAGE_INPUTS)] + [
            np.prod([values[part] for part in name.split("*")], axis=0) for name in inter
        ]
        X.append(np.stack(cols, 1))
        y.append(o["gain_px"] > 0)
        w.append(np.abs(o["gain_px"]) + 0.5)
        photo += [o["photo"]] * m
        out += [i] * m
    return {
        "X": np.vstack(X),
        "y": np.concatenate(y).astype(np.float64),
        "w": np.concatenate(w),
        "photo": np.array(photo),
        "out": np.array(out),
    }


def _predict(fitted, X: np.ndarray) -> np.ndarray:
    mean, scale, b = fitted
    return 1 / (1 + np.exp(-np.clip(b[0] + ((X - mean) / scale) @ b[1:], -60, 60)))


def out_of_fold(d: dict[str, np.ndarray], l2: float, folds: int = 4) -> np.ndarray:
    photos = np.array(sorted(set(d["photo"])))
    np.random.default_rng(0).shuffle(photos)
    fold_of = {p: i % folds for i, p in enumerate(photos)}
    f = np.array([fold_of[p] for p in d["photo"]])
    s = np.zeros(len(d["y"]))
    for k in range(folds):
        s[f == k] = _predict(fit_logistic(d["X"][f != k], d["y"][f != k], d["w"][f != k], l2), d["X"][f == k])
    return s


# ---------------------------------------------------------------------------------------------------
# the policy's outcome


def thresholds(o: dict[str, Any], thin: float, thick: float) -> np.ndarray:
    """(n,) the threshold of each change of output ``o``: ``thin`` for changes of inscribed radius
    <= 1.5 px, ``thick`` for the others."""
    return np.where(o["rf"]["radius"] <= THIN_RADIUS, thin, thick) if o["n"] else np.zeros(0)


def evaluate(outs, accept_of, image_min: float, offsets: bool = False) -> dict[str, dict[str, Any]]:
    """Per kind: mBA coarse / refined / policy, images worse, changed pixels kept, gain kept (and
    edge offsets). ``accept_of(i)``: (n,) bool, the changes of output i the region model accepts
    (all of them where the image-level policy accepts the output); None: the image-level policy alone."""
    from pipeline.bench.trust import _edge_offset
    from pipeline.metrics import mba

    res: dict[str, dict[str, Any]] = {}
    images: dict[str, np.ndarray] = {}
    for kind in TRUST_KINDS:
        c, r, p, kept_px, off = [], [], [], [], []
        for i, o in enumerate(outs):
            if o["kind"] != kind or o["mba_coarse"] is None or o["mba_refined"] is None:
                continue
            if o["score"] >= image_min:
                acc = np.ones(o["n"], bool)
            else:
                acc = np.zeros(o["n"], bool) if accept_of is None else accept_of(i)

            def take(acc=acc, o=o):  # the changed pixels taken: an index over the whole image, when needed
                return np.concatenate([[False], acc])[o["labels"]]

            if not acc.any():
                v = o["mba_coarse"]
            elif acc.all():
                v = o["mba_refined"]
            else:
                memo = o.setdefault("_mba", {})
                k = np.packbits(acc).tobytes()
                if k not in memo:
                    memo[k] = mba(o["coarse"] ^ take(), o["truth"])
                v = memo[k]
            c.append(o["mba_coarse"])
            r.append(o["mba_refined"])
            p.append(v)
            if o["n"]:  # outputs that changed
                kept_px.append(float(o["size"][acc].sum() / o["size"].sum()))
            if offsets:
                if o["npz"] not in images:
                    images.clear()
                    images[o["npz"]] = np.load(o["npz"])["image"]
                image = images[o["npz"]]
                u8 = lambda m: np.where(m, 255, 0).astype(np.uint8)  # noqa: E731
                off.append(
                    [
                        _edge_offset(image, u8(o["coarse"])),
                        _edge_offset(image, u8(o["coarse"] ^ (o["labels"] > 0))),
                        _edge_offset(image, u8(o["coarse"] ^ take())),
                        _edge_offset(image, u8(o["truth"])),
                        o["trust_s"] + o["regions_s"],
                        o["refine_s"],
                    ]
                )
        c, r, p = map(np.array, (c, r, p))
        gain = (r - c).mean()
        res[kind] = {
            "n": len(c),
            "mba_coarse": 100 * c.mean(),
            "mba_refined": 100 * r.mean(),
            "mba_policy": 100 * p.mean(),
            "worse_refined": 100 * (r < c).mean(),
            "worse_policy": 100 * (p < c).mean(),
            "kept_px": 100 * float(np.mean(kept_px)) if kept_px else float("nan"),
            "gain_kept": None if gain <= 0 else 100 * (p - c).mean() / gain,
        }
        if offsets:
            a = np.array(off, np.float64)
            res[kind]["offsets"] = np.nanmean(a[:, :4], 0)
            res[kind]["seconds"] = a[:, 4:].mean(0)
    return res


def meets(res, max_worse: float, tolerance: float = 0.0, floor=None) -> bool:
    """At most ``max_worse`` percent of images worse and the mean mBA at most ``tolerance`` points below
    the coarse one, on every kind; with ``floor`` (another policy's outcome on the same outputs), a
    kind that policy already breaks the rules on may stay as it is there, no worse."""
    ok = []
    for kind, v in res.items():
        worse, least = max_worse, -tolerance
        if floor is not None:
            worse = max(worse, floor[kind]["worse_policy"])
            least = min(least, floor[kind]["mba_policy"] - floor[kind]["mba_coarse"])
        ok.append(v["worse_policy"] <= worse + 1e-9 and v["mba_policy"] - v["mba_coarse"] >= least - 1e-9)
    return all(ok)


def objective(res) -> float:
    return float(np.mean([min(100.0, res[k]["gain_kept"] or 0.0) for k in GAIN_KINDS]))


def format_table(res) -> str:
    lines = [
        "| coarse kind | n | mBA coarse -> refined -> accepted | images worse refined / accepted "
        "| changed px kept | gain kept |"
        + (
            " edge offset px coarse / refined / accepted (truth) | trust + regions s / refine s |"
            if "offsets" in next(iter(res.values()))
            else ""
        ),
        "|---|---|---|---|---|---|" + ("---|---|" if "offsets" in next(iter(res.values())) else ""),
    ]
    for kind, v in res.items():
        kept = "n/a" if v["gain_kept"] is None else f"{v['gain_kept']:.0f}%"
        line = (
            f"| {kind} | {v['n']} | {v['mba_coarse']:.2f} -> {v['mba_refined']:.2f} -> "
            f"{v['mba_policy']:.2f} | "
            f"{v['worse_refined']:.0f}% / {v['worse_policy']:.0f}% | {v['kept_px']:.0f}% | {kept} |"
        )
        if "offsets" in v:
            o, s = v["offsets"], v["seconds"]
            line += f" {o[0]:+.2f} / {o[1]:+.2f} / {o[2]:+.2f} ({o[3]:+.2f}) | {s[0]:.3f} / {s[1]:.2f} |"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


GATES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
#: the (coarser) change thresholds searched together with a gate
GATE_THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.99, 1.01)


def evaluate_sets(outs, accept_of, image_min: float, offsets: bool = False) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` per set."""
    res = {}
    for name in dict.fromkeys(o["set"] for o in outs):
        idx = [i for i, o in enumerate(outs) if o["set"] == name]
        sub = [outs[i] for i in idx]
        acc = None if accept_of is None else (lambda j, idx=idx: accept_of(idx[j]))
        res[name] = evaluate(sub, acc, image_min, offsets)
    return res


def meets_sets(res, max_worse: float, tolerance: float = 0.0, floor=None) -> bool:
    return all(meets(r, max_worse, tolerance, None if floor is None else floor[name])
               for name, r in res.items())


def objective_sets(res) -> float:
    return float(np.mean([objective(r) for r in res.values()]))


def format_sets(res) -> str:
    return "\n".join(f"{name}:\n{format_table(r)}" for name, r in res.items())


def fit_model(outs: Sequence[dict[str, Any]], inter: Sequence[str], image_min: float, *, l2: float = 1.0,
              thick: bool = True, gate: bool = True, max_worse: float = 5.0, tolerance: float = 0.0,
              fitted_on: Sequence[str] = (), config: str = "", base: RegionTrustModel | None = None
              ) -> tuple[RegionTrustModel, dict] | None:
    """Fit the model on the changes of ``outs`` and choose its thresholds out of fold (module
    docstring); (the model refitted on every change, the out-of-fold outcome per set) or None when no
    thresholds meet the rules. With ``base`` (a model that was not fitted on ``outs``) the thresholds
    are chosen for the policy that takes a change when either model takes it (``base``'s large-image
    model: :class:`RegionTrustModel`)."""
    d = design(outs, inter)
    oof = out_of_fold(d, l2)
    taken = [accepts(base, o) if base is not None else np.zeros(o["n"], bool) for o in outs]
    floor = None if base is None else evaluate_sets(outs, lambda i: taken[i], image_min)
    by_out: dict[int, list[int]] = {}
    for row, i in enumerate(d["out"]):
        by_out.setdefault(int(i), []).append(row)
    best = None
    gates, grid = (GATES, GATE_THRESHOLDS) if gate else ((0.0,), THRESHOLDS)
    for g, thin, thick_t in itertools.product(gates, grid, grid if thick else [None]):
        thick_t = thin if thick_t is None else thick_t

        def accept_of(i, thin=thin, thick_t=thick_t, g=g):
            if i not in by_out or outs[i]["score"] < g:
                return taken[i]
            return taken[i] | (oof[by_out[i]] >= thresholds(outs[i], thin, thick_t))

        res = evaluate_sets(outs, accept_of, image_min)
        if meets_sets(res, max_worse, tolerance, floor) and (best is None or objective_sets(res) > best[3]):
            best = (g, thin, thick_t, objective_sets(res), res)
    if best is None:
        return None
    g, t, t_thick, _, res = best
    mean, scale, b = fit_logistic(d["X"], d["y"], d["w"], l2)
    model = RegionTrustModel(
        features=tuple(input_names(inter)),
        mean=tuple(map(float, mean)),
        scale=tuple(map(float, scale)),
        coef=tuple(map(float, b[1:])),
        intercept=float(b[0]),
        min_score=t,
        min_score_thick=t_thick,
        min_image_score=g,
        meta={
            "fitted_on": list(fitted_on),
            "regions": len({o["key"] for o in outs}),
            "changes": int(len(d["y"])),
            "config": config,
            "target": "taking the refined values makes more of the change's pixels right",
            "weights": "|pixels right - pixels wrong| + 0.5",
            "l2": l2,
            "min_score_rule": f"the most gain kept on {'/'.join(GAIN_KINDS)} with "
            f"<= {max_worse:g}% of images worse and mean mBA >= coarse - "
            f"{tolerance:g} on every kind of every set, out of fold (4 folds by photo)"
            + ("" if base is None else ", together with the base model (either takes a change; where the "
               "base alone breaks a rule, no worse than the base)"),
        },
    )
    return model, res


def accepts(model: RegionTrustModel, o: dict[str, Any]) -> np.ndarray:
    """(n,) bool: the changes of output ``o`` a region model accepts (its gate included)."""
    return model.accepts(Changes(o["labels"], o["rf"]), o["feats"], o["score"])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.fit_region_trust", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("refine", help="refine a set once and save the arrays (resumable)")
    a.add_argument("--data", required=True, help="prefix-layout set with _im/_gt files")
    a.add_argument("--out", required=True, help="local folder for the arrays")
    a.add_argument("--config", default="configs/demo.yaml")
    a.add_argument("--shuffle", action="store_true", help="seeded order: any prefix is a random subset")
    a.add_argument("--reverse", action="store_true", help="walk the order backwards (a second worker)")
    a.add_argument("--truth-offset", type=int, default=0,
                   help="move each truth's line this many px outward first (another line convention)")
    a.add_argument("--max-side", type=int, default=None, help="shrink images and truths to this long side")
    f = sub.add_parser("fit", help="fit the model and choose min_score on a refined folder")
    f.add_argument("--val", required=True, nargs="+", help="folder(s) written by refine (the fitting sets)")
    f.add_argument("--out", default=None, help="write the model JSON here")
    f.add_argument("--interactions", choices=sorted(INTERACTIONS), default="small")
    f.add_argument("--l2", type=float, default=1.0)
    f.add_argument(
        "--thick",
        action="store_true",
        help="choose a second threshold for thick changes (default: one for all)",
    )
    f.add_argument("--gate", action="store_true",
                   help="also choose a lowest image-level score below which no change is taken")
    f.add_argument("--max-worse", type=float, default=5.0, help="percent of images worse allowed per kind")
    f.add_argument("--base", default=None,
                   help="a region model JSON without a large-image model, which the fit adds to (the "
                   "shipped file has one: take v3 from git history): the thresholds are chosen for "
                   "'either model takes a change', and --out is the base with the fit as its large-image "
                   "model (needs --large-from-side)")
    f.add_argument("--large-from-side", type=int, default=None,
                   help="with --base: the long side (px) from which the fitted model joins the base")
    f.add_argument(
        "--mba-tolerance",
        type=float,
        default=0.0,
        help="mean mBA points a kind may lose against its coarse masks (default 0)",
    )
    r = sub.add_parser("report", help="the policies on a refined folder (never the fitting one)")
    r.add_argument("--data", required=True, nargs="+", help="folder(s) written by refine")
    r.add_argument("--model", required=True, help="region trust model JSON")
    for p in (f, r):
        p.add_argument("--config", default="configs/demo.yaml", help="the config the folder was refined with")
    args = ap.parse_args(argv)

    from pipeline.refine.trust import load_trust_model

    if args.cmd == "refine":
        refine_set(
            args.data, args.out, args.config, args.shuffle, args.reverse, args.truth_offset, args.max_side
        )
        return 0
    image_min = load_trust_model("shipped").min_score
    if args.cmd == "fit":
        if (args.base is None) != (args.large_from_side is None):
            ap.error("--base and --large-from-side go together")
        base = None if args.base is None else load_region_model(args.base)
        if base is not None and base.large is not None:
            ap.error(f"--base {args.base} already has a large-image model")
        outs = load_sets(args.val, args.config)
        inter = INTERACTIONS[args.interactions]
        print(f"{len({o['key'] for o in outs})} regions in {len(args.val)} set(s); interactions "
              f"{args.interactions}, l2 {args.l2:g}")
        print("image-level policy alone:")
        print(format_sets(evaluate_sets(outs, None, image_min)))
        fitted = fit_model(outs, inter, image_min, l2=args.l2, thick=args.thick, gate=args.gate,
                           max_worse=args.max_worse, tolerance=args.mba_tolerance,
                           fitted_on=[os.path.basename(os.path.normpath(v)) for v in args.val],
                           config=args.config, base=base)
        if fitted is None:
            print(
                f"no min_score meets <= {args.max_worse:g}% worse and mean mBA >= coarse - "
                f"{args.mba_tolerance:g} on every kind"
            )
            return 1
        model, res = fitted
        print(
            f"regions, out of fold: image gate {model.min_image_score:.2f}, min_score {model.min_score:.2f}, "
            f"thick {model.min_score_thick:.2f} (mean gain kept on {', '.join(GAIN_KINDS)}: "
            f"{objective_sets(res):.1f}%)"
        )
        print(format_sets(res))
        if args.out:
            saved = model if base is None else dataclasses.replace(
                base, large=model, large_from_side=args.large_from_side)
            saved.save(args.out)
            print(
                f"-> {args.out}{'' if base is None else ' (the base, with this model for large images)'}; "
                "coefficients: " + ", ".join(f"{n} {c:+.2f}" for n, c in zip(model.features, model.coef))
            )
        return 0
    outs = load_sets(args.data, args.config)
    model = load_region_model(args.model)
    print(f"{len({o['key'] for o in outs})} regions of {', '.join(args.data)}")
    print(f"image-level policy (shipped, min_score {image_min:.3f}):")
    print(format_sets(evaluate_sets(outs, None, image_min)))
    large = model.large
    print(
        f"regions ({args.model}, image gate {model.min_image_score:.2f}, "
        f"min_score {model.min_score:.2f}, thick {model.min_score_thick:.2f}"
        + ("" if large is None else f"; from a long side of {model.large_from_side} px also the large-image "
           f"model's: gate {large.min_image_score:.2f}, min_score {large.min_score:.2f}, thick "
           f"{large.min_score_thick:.2f}")
        + "):"
    )
    print(format_sets(evaluate_sets(outs, lambda i: accepts(model, outs[i]), image_min, offsets=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
