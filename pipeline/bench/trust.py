"""`samsr benchmark trust`: does the trust score rank refined masks, and does do-no-harm hold?

    samsr benchmark trust --data B/test --data DATA/holdout --max-side 1024

For every sample and coarse kind (made from the truth as in `samsr benchmark quality`), the refiner
runs with the given settings (default: ``configs/demo.yaml``'s) through
:func:`pipeline.refine.cascade.refine_detailed`; the trust features and the score of the trust
model (default the shipped one) are computed without the truth, then the truth judges. Per data
folder and kind it prints:

- ``spearman``: Spearman rank correlation between the score and the real mBA gain (refined -
  coarse; > 0: a higher score means a larger gain);
- ``AUC worse``: ROC AUC of the score for telling "made worse" (mBA gain < 0) apart from "not
  worse" (1 = every worse output scores below every other one; 0.5 = chance; n/a with one class);
- coarse / refined / accepted mean mBA and images worse (the accepted output is the refined mask
  where score >= min_score, else the coarse one), the share accepted, the share of the refined
  gain the policy keeps, and the mean edge offset of each (`pipeline.train.regions.edge_offset`;
  the truth's in brackets).

``--policy regions`` (the default when the config's ``refine.accept`` is ``regions``) measures the
per-change policy of :mod:`pipeline.refine.regions_trust` instead: the accepted output keeps the
changes the region model accepts, and ``accepted`` is the mean share of the changed pixels kept
(over the outputs that changed).
Rows hold its outcome (``mba_regions``...), computed while refining: ``--from-rows`` reports it as
saved and cannot rescore it with another region model.

``--fit OUT.json`` instead fits a trust model (:func:`fit_trust_model`) on the rows and writes it;
``--rows FILE`` saves every per-sample row (features, metrics), ``--from-rows FILE`` (repeatable)
reuses saved rows without refining again. Fit on training photos, report on others. A script, not
a timed test.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.boundary import move_line
from pipeline.refine.trust import FEATURES, TrustModel, model_input

__all__ = ["spearman", "roc_auc", "fit_trust_model", "choose_min_score", "evaluate",
           "summarise", "format_table", "main"]

TRUST_KINDS = ("lowres8", "lowres16", "blocky8", "perturbed", "identity")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of x, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None with < 3 values or no spread."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} vs {len(b)} values")
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return None if den == 0 else float((ra * rb).sum() / den)


def roc_auc(score: Sequence[float], positive: Sequence[bool]) -> float | None:
    """ROC AUC of ``score`` for ``positive`` (Mann-Whitney, ties count half); None with one class."""
    s, y = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: the inputs of the shipped trust model: every feature, and the logs of the heavy-tailed ones
MODEL_INPUTS = (*FEATURES, "log_shift_px", "log_coarse_detail", "log_coarse_detail1", "log_coarse_detail4")


def _design(rows: Sequence[Mapping[str, Any]], features: Sequence[str]) -> np.ndarray:
    return np.array([[model_input(f, r) for f in features] for r in rows], np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, [intercept, coef...]) of a ``weight``-ed logistic fit of ``y`` on the
    standardised columns of ``x``, L2-penalised (``l2`` on the coefficients, not the intercept),
    by Newton's method."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    weight = weight / weight.mean()
    b = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], float(l2))
    penalty[0] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(z @ b, -60, 60)))
        grad = z.T @ (weight * (p - y)) + penalty * b
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(b))
        step = np.linalg.solve(hess, grad)
        b -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, b


def fit_trust_model(rows: Sequence[Mapping[str, Any]], features: Sequence[str] = MODEL_INPUTS,
                    l2: float = 1.0, min_score: float = 0.5, margin: float = 0.0,
                    meta: Mapping[str, Any] | None = None) -> TrustModel:
    """A logistic model of P(mBA gain > ``margin``) on standardised ``features`` (model inputs:
    :func:`pipeline.refine.trust.model_input`), L2-penalised
    (``l2`` on the coefficients, not the intercept), fitted by Newton's method. Each row needs the
    features and ``mba_coarse`` / ``mba_refined``; rows without both metrics are skipped."""
    rows = [r for r in rows if r.get("mba_coarse") is not None and r.get("mba_refined") is not None]
    if len(rows) < 10:
        raise ValueError(f"fit_trust_model: {len(rows)} scored rows; need >= 10")
    x = _design(rows, features)
    y = np.array([r["mba_refined"] - r["mba_coarse"] > margin for r in rows], np.float64)
    if y.min() == y.max():
        raise ValueError("fit_trust_model: every row is on one side; nothing to tell apart")
    mean, scale, w = fit_logistic(x, y, np.ones(len(y)), float(l2))
    return TrustModel(tuple(features), tuple(float(v) for v in mean), tuple(float(v) for v in scale),
                      tuple(float(v) for v in w[1:]), float(w[0]), float(min_score), dict(meta or {}))


def choose_min_score(rows: Sequence[Mapping[str, Any]], scores: Sequence[float], max_worse: float = 0.05,
                     group: str = "kind") -> float:
    """The lowest threshold at which, in every ``group`` of rows, at most ``max_worse`` of the outputs
    are made worse (the accepted output's mBA below the coarse one) and the accepted mean mBA is not
    below the coarse mean: the do-no-harm targets, met with as much of the gain kept as they allow."""
    s = np.asarray(scores, np.float64)
    gain = np.array([r["mba_refined"] - r["mba_coarse"] for r in rows], np.float64)
    groups = sorted({r[group] for r in rows})
    idx = {g: np.array([r[group] == g for r in rows]) for g in groups}
    for t in np.unique(np.concatenate([[0.0], s])):
        ok = True
        for g in groups:
            take = s[idx[g]] >= t
            kept = np.where(take, gain[idx[g]], 0.0)
            if (kept < 0).mean() > max_worse or kept.mean() < 0:
                ok = False
                break
        if ok:
            return float(t)
    return 1.0


def _edge_offset(image: np.ndarray, mask: np.ndarray) -> float:
    from pipeline.bench.quality import binary_mask
    from pipeline.train.regions import edge_offset

    return float(edge_offset(image, binary_mask(mask)))


def evaluate(refiner, refs: Sequence[Any], kinds: Sequence[str] = TRUST_KINDS, *, proposer=None,
             working_size: int = 1024, proposal_seed: int = 0, max_side: int | None = None, seed: int = 0,
             sources: Sequence[str] | None = None, log: bool = True, truth_offset: int = 0,
             region_model=None, min_score: float | None = None) -> list[dict[str, Any]]:
    """One row per (sample, kind): the trust features, the score of ``refiner.trust_model``, the
    coarse / refined metrics against the truth, edge offsets and times. ``refiner``: a
    :class:`pipeline.refine.loaded.LoadedRefiner` (its model, options, device and trust model are used;
    its accept policy is not: both outputs are judged). ``proposer``: the proposal generator of a
    samsr-v2.1 model (None for crm). ``truth_offset``: :func:`move_line` on each truth first.
    ``region_model``: a :class:`pipeline.refine.regions_trust.RegionTrustModel`; each row then also
    holds the ``regions`` policy's output metrics (``mba_regions``, ``iou_regions``,
    ``offset_regions``), the share of changed pixels it kept (``regions_share``) and its seconds;
    ``min_score``: the image-level threshold it applies first (None: the trust model's)."""
    from pipeline.bench.quality import _shrink, binary_mask, make_coarse
    from pipeline.io import load_sample
    from pipeline.metrics import image_metrics
    from pipeline.refine.cascade import refine_detailed
    from pipeline.refine.regions_trust import decide_regions
    from pipeline.refine.trust import trust_features
    from pipeline.sam import propose

    rows: list[dict[str, Any]] = []
    for i, ref in enumerate(refs):
        s = load_sample(ref, load_gt=False)
        image, truth = _shrink(s.image, s.coarse, max_side)
        truth = move_line(truth, truth_offset)
        colours = None
        if proposer is not None:
            props = propose(proposer, image, s.key, working_size=working_size, seed=proposal_seed)
            colours = props.colour_map
        truth_edge = _edge_offset(image, truth)
        for kind in kinds:
            coarse = make_coarse(truth, kind, s.key, seed)
            t0 = time.perf_counter()
            r = refine_detailed(refiner.model, image, coarse, colours, options=refiner.options,
                                device=refiner.device)
            t1 = time.perf_counter()
            feats = trust_features(r.prob, r.coarse01, image, r.spread)
            score = None if refiner.trust_model is None else refiner.trust_model.score(feats)
            t2 = time.perf_counter()
            mc, mr = image_metrics(coarse, truth), image_metrics(r.prob, truth)
            row = {"key": s.key, "kind": kind, "source": None if sources is None else sources[i],
                   "size": list(truth.shape), **feats, "score": score, "line_level": r.threshold,
                   "mba_coarse": mc["mba"], "mba_refined": mr["mba"], "iou_coarse": mc["iou"],
                   "iou_refined": mr["iou"], "offset_truth": truth_edge,
                   "offset_coarse": _edge_offset(image, coarse),
                   "offset_refined": _edge_offset(image, r.prob),
                   "refine_s": t1 - t0, "trust_s": t2 - t1}
            if region_model is not None:
                t3 = time.perf_counter()
                out, share, _ = decide_regions(r.prob, r.coarse01, image, r.spread, feats,
                                               refiner.trust_model, region_model, min_score)
                t4 = time.perf_counter()
                mo = image_metrics(out, truth)
                changed = bool(np.any(binary_mask(r.prob) != binary_mask(r.coarse01)))
                row.update(mba_regions=mo["mba"], iou_regions=mo["iou"],
                           regions_share=share if changed else None,
                           offset_regions=_edge_offset(image, out), regions_s=t4 - t3)
            rows.append(row)
            if log:
                print(f"[trust] {s.key} {kind:<9} mba {100 * (mc['mba'] or 0):6.2f} -> "
                      f"{100 * (mr['mba'] or 0):6.2f}  score {'n/a' if score is None else f'{score:.3f}'}",
                      flush=True)
    return rows


def _mean(v: Sequence[float]) -> float | None:
    v = [x for x in v if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarise(rows: Sequence[Mapping[str, Any]], min_score: float, policy: str = "score") -> dict[str, Any]:
    """Per kind: n, spearman, auc_worse, mean mBA (percent) of coarse / refined / accepted, images worse
    (percent) of refined / accepted, accepted share, gain kept (percent of the refined gain), mean
    edge offsets, mean refine and trust seconds. ``policy``: ``score`` (accepted: the refined mask
    where score >= min_score) or ``regions`` (the rows' saved per-change outcome)."""
    if policy not in ("score", "regions"):
        raise ValueError(f"policy {policy!r}; expected 'score' or 'regions'")
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rr = [r for r in rows if r["kind"] == kind and r["mba_coarse"] is not None
              and r["mba_refined"] is not None]
        if not rr:
            continue
        c = np.array([r["mba_coarse"] for r in rr])
        g = np.array([r["mba_refined"] for r in rr]) - c
        s = np.array([np.nan if r["score"] is None else r["score"] for r in rr])
        has = bool(np.isfinite(s).all())
        if policy == "regions":
            if any(r.get("mba_regions") is None for r in rr):
                raise ValueError("policy regions: rows without mba_regions (refine with a region model)")
            kept = np.array([r["mba_regions"] for r in rr]) - c
            shares = [r["regions_share"] for r in rr if r.get("regions_share") is not None]
            accepted = 100 * float(np.mean(shares)) if shares else None
            offsets = [r.get("offset_regions") for r in rr]
            trust_s = [r.get("trust_s", 0.0) + r.get("regions_s", 0.0) for r in rr]
        else:
            take = s >= min_score if has else np.ones(len(rr), bool)
            kept = np.where(take, g, 0.0)
            offsets = [r.get("offset_refined") if t else r.get("offset_coarse") for r, t in zip(rr, take)]
            trust_s = [r.get("trust_s") for r in rr]
            accepted = 100 * take.mean()
        out[kind] = {
            "n": len(rr), "spearman": spearman(s, g) if has else None,
            "auc_worse": roc_auc(-s, g < 0) if has else None,
            "mba_coarse": 100 * c.mean(), "mba_refined": 100 * (c + g).mean(),
            "mba_accepted": 100 * (c + kept).mean(),
            "worse_refined": 100 * (g < 0).mean(), "worse_accepted": 100 * (kept < 0).mean(),
            "accepted": accepted,
            "gain_kept": None if g.mean() <= 0 else 100 * kept.mean() / g.mean(),
            "offset_truth": _mean([r.get("offset_truth") for r in rr]),
            "offset_coarse": _mean([r.get("offset_coarse") for r in rr]),
            "offset_refined": _mean([r.get("offset_refined") for r in rr]),
            "offset_accepted": _mean(offsets),
            "refine_s": _mean([r.get("refine_s") for r in rr]),
            "trust_s": _mean(trust_s),
        }
    return out


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table, one row per coarse kind (see :func:`summarise`)."""
    lines = ["| coarse kind | n | spearman | AUC worse | mBA coarse -> refined -> accepted | images worse "
             "refined / accepted | accepted | gain kept | edge offset px coarse / refined / accepted (truth) "
             "| trust s / refine s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in summary.items():
        lines.append(
            f"| {kind} | {k['n']} | {_f(k['spearman'], '+.3f')} | {_f(k['auc_worse'], '.3f')} | "
            f"{k['mba_coarse']:.2f} -> {k['mba_refined']:.2f} -> {k['mba_accepted']:.2f} | "
            f"{k['worse_refined']:.0f}% / {k['worse_accepted']:.0f}% | {_f(k['accepted'], '.0f')}% | "
            f"{_f(k['gain_kept'], '.0f')}{'' if k['gain_kept'] is None else '%'} | "
            f"{_f(k['offset_coarse'], '+.2f')} / {_f(k['offset_refined'], '+.2f')} / "
            f"{_f(k['offset_accepted'], '+.2f')} ({_f(k['offset_truth'], '+.2f')}) | "
            f"{_f(k['trust_s'], '.3f')} / {_f(k['refine_s'], '.2f')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="samsr benchmark trust", description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", default=[], metavar="URI",
                    help="prefix-layout set with _im/_gt files (repeatable; a table per folder)")
    ap.add_argument("--from-rows", action="append", default=[], metavar="FILE",
                    help="rows saved by --rows instead of refining (repeatable)")
    ap.add_argument("--config", default="configs/demo.yaml",
                    help="job config whose method, model and refine settings are measured "
                    "(default configs/demo.yaml: what `make demo` runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as in `samsr refine --set`")
    ap.add_argument("--trust-model", default=None,
                    help="trust model JSON (default: the config's refine.trust_model)")
    ap.add_argument("--policy", choices=["score", "regions"], default=None,
                    help="acceptance measured (default: the config's refine.accept when refining --data "
                    "without --fit, if score or regions; else score)")
    ap.add_argument("--region-model", default=None,
                    help="--policy regions: region trust model JSON (default: the config's "
                    "refine.region_model)")
    ap.add_argument("--min-score", type=float, default=None,
                    help="acceptance threshold (default: the config's refine.min_score, else the model's)")
    ap.add_argument("--kinds", default=",".join(TRUST_KINDS),
                    help=f"coarse kinds (default {','.join(TRUST_KINDS)})")
    ap.add_argument("--limit", type=int, default=None, help="at most this many samples per --data")
    ap.add_argument("--max-side", type=int, default=None, help="shrink images and truths to this long side")
    ap.add_argument("--truth-offset", type=int, default=0, metavar="PX",
                    help="move each truth's line PX pixels outward (< 0: inward) before making the coarse "
                    "masks: another annotation convention (people draw ~1 px outside the image's edge)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--rows", default=None, help="write every per-sample row (JSON) here")
    ap.add_argument("--fit", default=None, metavar="OUT.json",
                    help="fit a trust model on the rows (training photos!) and write it here")
    ap.add_argument("--max-worse", type=float, default=0.04,
                    help="--fit: the min_score chosen keeps images made worse <= this share per kind "
                    "(default 0.04)")
    ap.add_argument("--margin", type=float, default=0.01,
                    help="--fit: the model estimates P(mBA gain > MARGIN) (default 0.01: one mBA point)")
    ap.add_argument("--l2", type=float, default=1.0, help="--fit: L2 penalty on the coefficients")
    args = ap.parse_args(argv)
    if not args.data and not args.from_rows:
        ap.error("give --data or --from-rows")

    from pipeline.bench.quality import parse_kinds
    from pipeline.config import load_config
    from pipeline.config.typed import parse_override
    from pipeline.refine.trust import load_trust_model

    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as e:
        ap.error(f"--kinds: {e}")
    cfg = load_config(args.config, [parse_override(o) for o in args.set])
    trust_path = args.trust_model or cfg.refine.trust_model
    # refining: the config's policy; --fit and saved rows alone: the image-level one (a saved per-change
    # outcome cannot be rescored)
    config_policy = cfg.refine.accept if cfg.refine.accept in ("score", "regions") else "score"
    policy = args.policy or (config_policy if args.data and not args.fit else "score")
    if policy == "regions" and args.fit:
        ap.error("--fit fits the image-level model: use --policy score")
    region_path = (args.region_model or cfg.refine.region_model) if policy == "regions" else None
    if policy == "regions" and not trust_path:
        ap.error("--policy regions needs a trust model (its image score is an input of the region model)")
    rows: list[dict[str, Any]] = []
    for path in args.from_rows:
        with open(path) as f:
            rows.extend(json.load(f))
    if args.data:
        rows.extend(_run(cfg, args, kinds, trust_path, region_path))
    if args.rows:
        with open(args.rows, "w") as f:
            json.dump(rows, f)
    if args.fit:
        model = fit_trust_model(rows, l2=args.l2, margin=args.margin, meta={
            "fitted_on": sorted({str(r.get("source")) for r in rows}), "rows": len(rows),
            "kinds": sorted({r["kind"] for r in rows}), "config": args.config, "overrides": args.set,
            "target": f"mBA(refined) - mBA(coarse) > {args.margin:g}", "l2": args.l2})
        scores = [model.score(r) for r in rows]
        groups = [{**r, "_group": f"{r.get('source')}|{r['kind']}"} for r in rows]
        t = choose_min_score(groups, scores, args.max_worse, group="_group")
        rule = (f"the lowest with <= {args.max_worse:.0%} of images worse and the mean mBA >= coarse on "
                "every kind of every source of the fitting rows")
        model = TrustModel(model.features, model.mean, model.scale, model.coef, model.intercept, t,
                           {**model.meta, "min_score_rule": rule})
        model.save(args.fit)
        for r, s in zip(rows, scores):
            r["score"] = s
        print(f"fitted on {len(rows)} rows -> {args.fit}; min_score {t:.3f}; coefficients "
              + ", ".join(f"{f} {c:+.2f}" for f, c in zip(model.features, model.coef)))
        min_score = t
    else:
        model = load_trust_model(trust_path) if trust_path else None
        if args.from_rows and model is not None:  # rescore saved rows with this model
            for r in rows:
                r["score"] = model.score(r)
        min_score = args.min_score if args.min_score is not None else (
            cfg.refine.min_score if cfg.refine.min_score is not None else (model.min_score if model else 0.0))
    overrides = "".join(f" --set {o}" for o in args.set)
    print(f"\nconfig {args.config}{overrides}; trust model {trust_path}; "
          + (f"policy regions, region model {region_path}" if policy == "regions"
             else f"min_score {min_score:.3f}"))
    for source in dict.fromkeys(str(r.get("source")) for r in rows):
        part = [r for r in rows if str(r.get("source")) == source]
        print(f"\n{source} ({len({r['key'] for r in part})} images):")
        print(format_table(summarise(part, min_score, policy)))
    return 0


def _run(cfg, args, kinds: Sequence[str], trust_path: str | None, region_path: str | None
         ) -> list[dict[str, Any]]:
    from pipeline.io import list_samples
    from pipeline.refine.loaded import LoadedRefiner, refine_options
    from pipeline.refine.regions_trust import load_region_model
    from pipeline.runner.workers import ProposalWorker, proposal_kwargs

    if cfg.method == "samsr-v1":
        raise SystemExit("samsr benchmark trust: method samsr-v1 is not supported (crm or samsr-v2.1)")
    refiner = LoadedRefiner(cfg.model.name, cfg.model.checkpoint, refine_options(cfg), args.device,
                            args.threads, {"policy": "none", "trust_model": trust_path})
    proposer = None
    if cfg.method == "samsr-v2.1":
        kw = proposal_kwargs(cfg, args.threads, v1=False)
        kw["device"] = args.device
        proposer = ProposalWorker(**kw).generator
    listed = [(uri, r) for uri in args.data
              for r in list_samples(uri, "prefix", mask_suffix="_gt.png")[: args.limit]]
    if not listed:
        raise SystemExit(f"samsr benchmark trust: no samples in {args.data}")
    return evaluate(refiner, [r for _, r in listed], kinds, proposer=proposer,
                    working_size=cfg.sam.working_size, proposal_seed=cfg.sam.seed, max_side=args.max_side,
                    sources=[u for u, _ in listed], truth_offset=args.truth_offset,
                    region_model=load_region_model(region_path) if region_path else None,
                    min_score=args.min_score if args.min_score is not None else cfg.refine.min_score)


if __name__ == "__main__":
    raise SystemExit(main())
