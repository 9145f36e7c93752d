"""``samsr report``: a self-contained static HTML report of a refine output (manifest + masks).

One folder (``index.html`` + PNG/JPEG files, relative links, no scripts fetched, no network):
run facts, the coarse-vs-refined table, plots, the worst and best samples as overlays (image
with coarse, refined and ground-truth contours, plus a zoom on the largest disagreement),
failures grouped by error type, and a per-shard table when the input had several shards.
Any fsspec URL in and out.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections import Counter, defaultdict
from typing import Any

import cv2
import numpy as np

from pipeline.report.overlay import COLOURS, make_overlay
from pipeline.report.plots import change_histograms, coarse_vs_refined, gain_histograms, stage_times

__all__ = ["build_report", "rank_samples"]


def _gain(r: dict[str, Any]) -> float | None:
    if r.get("mba_refined") is not None and r.get("mba_coarse") is not None:
        return r["mba_refined"] - r["mba_coarse"]
    if r.get("iou_refined") is not None and r.get("iou_coarse") is not None:
        return r["iou_refined"] - r["iou_coarse"]
    return None


def rank_samples(rows: list[dict[str, Any]], worst: int, best: int) -> tuple[list[dict], list[dict], str]:
    """(worst, best, what was ranked): by mBA gain (IoU gain where mBA is null) with ground
    truth; without it by the trust score (least trusted first) when the rows have one, else by how
    much refinement changed the mask (largest change first as 'worst')."""
    ok = [r for r in rows if r["status"] == "ok"]
    scored = [(g, r) for r in ok if (g := _gain(r)) is not None]
    if scored:
        scored.sort(key=lambda t: (t[0], t[1]["key"]))
        low = [r for _, r in scored[:worst]]
        high = [r for _, r in scored[::-1] if r["key"] not in {x["key"] for x in low}][:best]
        return low, high, "mBA gain vs ground truth"
    trusted = sorted((r for r in ok if r.get("trust_score") is not None),
                     key=lambda r: (r["trust_score"], r["key"]))
    if trusted:
        low = trusted[:worst]
        high = [r for r in trusted[::-1] if r["key"] not in {x["key"] for x in low}][:best]
        return low, high, "trust score (quality estimate without ground truth), least trusted first"
    changed = sorted((r for r in ok if r.get("change_iou") is not None),
                     key=lambda r: (r["change_iou"], r["key"]))
    low = changed[:worst]
    high = [r for r in changed[::-1] if r["key"] not in {x["key"] for x in low}][:best]
    return low, high, "change: IoU(coarse, refined), lowest first"


def kept_text(row: dict[str, Any]) -> str:
    """What the acceptance policy wrote for a row: the refined mask, the coarse one, or (``refine.accept:
    regions``) some of the refined changes (``accepted_share`` of the changed pixels)."""
    if row.get("accepted") is not False:
        return "refined kept"
    share = row.get("accepted_share")
    if share:
        return f"{100 * share:.0f}% of the changed pixels kept (see candidates/)"
    return "coarse kept (see candidates/)"


def _pct(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}")


def _esc(v: Any) -> str:
    return html.escape("-" if v is None else str(v))


def _table(head: list[str] | None, rows: list[list[Any]], cls: str = "") -> str:
    cells = "" if head is None else "".join(f"<th>{_esc(h)}</th>" for h in head)
    th = f"<thead><tr>{cells}</tr></thead>" if head is not None else ""
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{th}<tbody>{body}</tbody></table>'


def _write_png(fs, path: str, rgb: np.ndarray, local: str) -> None:
    png = local.endswith(".png")
    params = [] if png else [cv2.IMWRITE_JPEG_QUALITY, 88]
    ok, buf = cv2.imencode(".png" if png else ".jpg", rgb[..., ::-1], params)
    if not ok:
        raise ValueError(f"cannot encode {path}")
    with fs.open(path, "wb") as f:
        f.write(buf.tobytes())


def build_report(output: str, out: str | None = None, worst: int = 8, best: int = 8, thumb: int = 480,
                 progress: bool = True) -> str:
    """Write the report of refine output ``output`` to ``out`` (default ``<output>/report``).

    Returns the URI of ``index.html``. Raises ValueError when the output has no manifest.
    """
    from tqdm import tqdm

    from pipeline.io import join_uri, latest_rows, open_fs, read_manifest
    from pipeline.summary import summarize_manifest

    table = read_manifest(output)
    if table.num_rows == 0:
        raise ValueError(f"{output!r}: no manifest rows (is it a samsr refine output?)")
    if any(k is not None for k in table.column("row_kind").to_pylist()):
        raise ValueError(f"{output!r}: a samsr relabel output (COCO / label maps); the report covers "
                         "samsr refine outputs. Use `samsr evaluate OUTPUT --coco-gt GT.json` or "
                         "`--labelmaps`, and `samsr query OUTPUT`")
    out = out or join_uri(output, "report")
    fs, base = open_fs(out)
    fs.makedirs(base, exist_ok=True)
    rows = latest_rows(table).to_pylist()
    summary = summarize_manifest(table)
    ok = [r for r in rows if r["status"] == "ok"]
    with_gt = bool(summary["with_gt"])

    plots = []
    with tempfile.TemporaryDirectory() as tmp:
        makers = ([("gains.png", gain_histograms, "Per-image gain"),
                   ("scatter.png", coarse_vs_refined, "Coarse vs refined, per image")] if with_gt
                  else [("change.png", change_histograms, "Change made by refinement")])
        makers.append(("stages.png", stage_times, "Time per stage"))
        for name, fn, title in makers:
            fn(ok, os.path.join(tmp, name))
            with open(os.path.join(tmp, name), "rb") as src, fs.open(f"{base}/{name}", "wb") as dst:
                dst.write(src.read())
            plots.append((name, title))

    low, high, ranked_by = rank_samples(rows, worst, best)
    cards: dict[str, str] = {}
    todo = [*low, *high]
    for i, r in enumerate(tqdm(todo, desc="report", unit="img", disable=not progress)):
        try:
            ov = make_overlay(r["image_uri"], {"coarse": r.get("mask_uri"), "refined": r.get("output_uri"),
                                                 "gt": r.get("gt_uri")}, (r["width"], r["height"]), thumb)
        except Exception as exc:  # an input moved or vanished since the run: say so, keep going
            cards[r["key"]] = f'<div class="card"><p class="key">{_esc(r["key"])}</p>' \
                f'<p class="err">overlay failed: {_esc(repr(exc))}</p></div>'
            continue
        thumb_name, zoom_name = f"s{i:04d}.jpg", f"s{i:04d}_zoom.png"
        _write_png(fs, f"{base}/{thumb_name}", ov.thumb, thumb_name)
        zoom = ""
        if ov.zoom is not None:
            _write_png(fs, f"{base}/{zoom_name}", ov.zoom, zoom_name)
            zoom = (f'<img class="zoom" src="{zoom_name}" '
                    f'alt="zoom on the largest disagreement of {_esc(r["key"])}">')
        g = _gain(r)
        facts = (f"mBA {_pct(r.get('mba_coarse'))} &rarr; {_pct(r.get('mba_refined'))} "
                 f"({_pct(g, True)}), IoU {_pct(r.get('iou_coarse'))} &rarr; {_pct(r.get('iou_refined'))}"
                 if with_gt else f"IoU(coarse, refined) {_pct(r.get('change_iou'))}, changed "
                 f"{_pct(r.get('changed_fraction'))} % of pixels")
        if r.get("trust_score") is not None:
            facts += f"; trust {r['trust_score']:.2f}, {kept_text(r)}"
        cards[r["key"]] = (f'<div class="card"><p class="key">{_esc(r["key"])} '
                           f'<span class="size">{r["width"]}x{r["height"]}</span></p>'
                           f'<img class="thumb" src="{thumb_name}" alt="{_esc(r["key"])}">{zoom}'
                           f'<p class="facts">{facts}</p></div>')

    facts = [
        ("job", ", ".join(sorted({str(r["job_id"]) for r in rows}))),
        ("method", ", ".join(summary["methods"]) or "-"),
        ("model", ", ".join(sorted({f"{r['model_name']} ({r['model_hash']})" for r in ok
                                    if r.get("model_name")})) or "-"),
        ("samples", f"{summary['samples']}: ok {summary['ok']}, error {summary['error']}, "
                    f"skipped {summary['skipped']}"),
        ("runs", len({r["run_id"] for r in rows if r.get("run_id")})),
    ]
    times = [r["finished_at"] for r in rows if r.get("finished_at") is not None]
    if times:
        facts.append(("finished", f"{min(times):%Y-%m-%d %H:%M:%S} .. {max(times):%Y-%m-%d %H:%M:%S} UTC "
                                  f"({(max(times) - min(times)).total_seconds():.0f} s)"))
    if summary.get("mean_total_ms") is not None:
        facts.append(("mean work per sample", f"{summary['mean_total_ms']:.0f} ms"))

    if with_gt:
        c, f = summary["coarse"], summary["refined"]
        quality = _table(["masks", "dataset IoU %", "mean mBA %", "mean Boundary IoU %"], [
            ["coarse", _pct(c["dataset_iou"]), _pct(c["mean_mba"]), _pct(c["mean_biou"])],
            ["refined", _pct(f["dataset_iou"]), _pct(f["mean_mba"]), _pct(f["mean_biou"])],
            ["gain", *[_pct(None if f[k] is None or c[k] is None else f[k] - c[k], True)
                       for k in ("dataset_iou", "mean_mba", "mean_biou")]],
        ], "quality")
        quality += f"<p class='note'>over {summary['with_gt']} images with ground truth; IoU: total " \
                   "intersection / total union; mBA, Boundary IoU: mean over images</p>"
    else:
        quality = _table(["no ground truth", "value %"], [
            ["mean IoU(coarse, refined)", _pct(summary["mean_change_iou"])],
            ["mean changed pixels", _pct(summary["mean_changed_fraction"])]], "quality")

    errors = [r for r in rows if r["status"] == "error"]
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in errors:
        by_type[r.get("error_type") or "unknown"].append(r)
    failures = "".join(f"<h3>{_esc(t)} ({len(v)})</h3>" + _table(
        ["key", "message"], [[r["key"], r.get("error_message")] for r in sorted(v, key=lambda r: r["key"])],
        "failures") for t, v in sorted(by_type.items())) or "<p>No failures.</p>"

    shards = Counter(r.get("shard") for r in rows)
    shard_html = ""
    if len(shards) > 1:
        per = []
        for shard in sorted(shards, key=str):
            rs = [r for r in rows if r.get("shard") == shard]
            gains = [g for r in rs if r["status"] == "ok" and (g := _gain(r)) is not None]
            counts = Counter(r["status"] for r in rs)
            per.append([shard, len(rs), counts["ok"], counts["error"],
                        _pct(float(np.mean(gains)), True) if gains else "-"])
        shard_html = "<h2>Per shard</h2>" + _table(["shard", "samples", "ok", "error", "mean mBA gain"], per,
                                                   "shards")

    legend = " ".join(f'<span class="sw" style="background:rgb{COLOURS[k]}"></span>{k}'
                      for k in ("coarse", "refined", "gt"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>samsr report: {_esc(output)}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
th{{background:#f0f0f0}} .cards{{display:flex;flex-wrap:wrap;gap:1em}}
.card{{border:1px solid #ddd;padding:.5em;max-width:820px}} .card img{{margin-right:.5em;vertical-align:top}}
.key{{font-weight:bold;margin:.2em 0}} .size,.note{{color:#777;font-weight:normal;font-size:90%}}
.err{{color:#b00}} .sw{{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;vertical-align:middle}}
</style></head><body>
<h1>samsr report</h1>
<p class="note">{_esc(output)}</p>
<h2>Run</h2>
{_table(None, [list(p) for p in facts], "facts")}
<h2>Quality</h2>
{quality}
<h2>Plots</h2>
{"".join(f'<figure><img class="plot" src="{n}" alt="{_esc(t)}"><figcaption>{_esc(t)}</figcaption></figure>'
         for n, t in plots)}
<h2>Worst {len(low)}</h2>
<p class="note">ranked by {_esc(ranked_by)}; contours: {legend}; right: the largest disagreement</p>
<div class="cards">{"".join(cards[r["key"]] for r in low)}</div>
<h2>Best {len(high)}</h2>
<div class="cards">{"".join(cards[r["key"]] for r in high)}</div>
<h2>Failures ({len(errors)})</h2>
{failures}
{shard_html}
</body></html>
"""
    index = f"{base}/index.html"
    with fs.open(index, "w") as f:
        f.write(page)
    from pipeline.io import to_uri

    return to_uri(fs, index, out)
