"""Dataset-level numbers from a manifest, and the tables the jobs print.

Works on the latest row per key (``pipeline.io.latest_rows``: the newest ok row, else the
newest row), so a resumed job is summarised once per sample. Dataset IoU is total
intersection over total union (DESIGN 3), mBA the mean over images whose band is not empty.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["summarize_manifest", "format_quality_table", "format_trust", "format_counts"]


def _metric_rows(rows: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [
        {
            "intersection": r[f"intersection_{tag}"],
            "union": r[f"union_{tag}"],
            "iou": r[f"iou_{tag}"],
            "mba": r[f"mba_{tag}"],
            "biou": r[f"biou_{tag}"],
        }
        for r in rows
    ]


def summarize_manifest(table: pa.Table, job_id: str | None = None) -> dict[str, Any]:
    """Summary of a manifest table (MANIFEST_SCHEMA), optionally of one ``job_id``.

    Returns {"samples", "ok", "error", "skipped", "error_types": {type: n}, "with_gt",
    "coarse": aggregate_metrics(...), "refined": aggregate_metrics(...) (None without gt),
    "mean_change_iou", "mean_changed_fraction", "mean_total_ms", "methods": [...], "scored" (rows with
    a trust score), "accepted" / "kept_coarse" / "kept_part" (the do-no-harm decisions: the refined
    mask, the coarse one, or some of the refined changes with the rest undone, ``refine.accept:
    regions``), "mean_trust_score"}.
    """
    from pipeline.io import latest_rows
    from pipeline.metrics import aggregate_metrics

    if job_id is not None and table.num_rows:
        table = table.filter(pc.equal(table.column("job_id"), job_id))
    rows = latest_rows(table).to_pylist() if table.num_rows else []
    status = Counter(r["status"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    gt_rows = [r for r in ok if r.get("union_refined") is not None and r.get("union_coarse") is not None]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        "samples": len(rows),
        "ok": status.get("ok", 0),
        "error": status.get("error", 0),
        "skipped": status.get("skipped", 0),
        "error_types": dict(Counter(r["error_type"] for r in rows if r["status"] == "error")),
        "with_gt": len(gt_rows),
        "coarse": aggregate_metrics(_metric_rows(gt_rows, "coarse")) if gt_rows else None,
        "refined": aggregate_metrics(_metric_rows(gt_rows, "refined")) if gt_rows else None,
        "mean_change_iou": mean(r["change_iou"] for r in ok),
        "mean_changed_fraction": mean(r["changed_fraction"] for r in ok),
        "mean_total_ms": mean(r["t_total_ms"] for r in ok),
        "methods": sorted({r["method"] for r in ok if r.get("method")}),
        "scored": sum(r.get("trust_score") is not None for r in ok),
        "accepted": sum(r.get("accepted") is True for r in ok),
        "kept_coarse": sum(r.get("accepted") is False and not r.get("accepted_share") for r in ok),
        "kept_part": sum(r.get("accepted") is False and bool(r.get("accepted_share")) for r in ok),
        "mean_trust_score": mean(r.get("trust_score") for r in ok),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}"


def format_trust(summary: dict[str, Any], unit: str = "images") -> str:
    """One line on the trust scores and the do-no-harm decisions ('' when nothing was scored)."""
    if not summary.get("scored"):
        return ""
    line = f"trust: {summary['scored']} {unit} scored (mean score {summary['mean_trust_score']:.2f})"
    if summary.get("kept_coarse") or summary.get("kept_part"):
        line += (f"; refined mask kept for {summary['accepted']}, "
                 f"coarse mask kept for {summary['kept_coarse']}")
        if summary.get("kept_part"):
            line += f", some changes kept for {summary['kept_part']} (the others undone)"
        line += " (the refined masks turned down are in candidates/)"
    return line


def format_quality_table(summary: dict[str, Any], unit: str = "images") -> str:
    """The thesis-style table: dataset IoU and mean mBA (in %) of coarse vs refined masks;
    ``unit`` names what a row of the manifest is (images; instances or classes for relabel)."""
    trust = format_trust(summary, unit)
    table = _quality_table(summary, unit)
    return f"{table}\n{trust}" if trust else table


def _quality_table(summary: dict[str, Any], unit: str) -> str:
    if not summary.get("with_gt"):
        lines = [
            "no ground truth: change between coarse and refined masks",
            f"  mean IoU(coarse, refined)  {_pct(summary.get('mean_change_iou'))} %",
            f"  mean changed pixels        {_pct(summary.get('mean_changed_fraction'))} %",
        ]
        return "\n".join(lines)
    c, r = summary["coarse"], summary["refined"]
    n = summary["with_gt"]
    head = f"{'masks':<10} {'IoU %':>8} {'mBA %':>8} {'BIoU %':>8}   (over {n} {unit} with gt)"
    lines = [head, "-" * len(head)]
    for name, agg in (("coarse", c), ("refined", r)):
        lines.append(
            f"{name:<10} {_pct(agg['dataset_iou']):>8} {_pct(agg['mean_mba']):>8} {_pct(agg['mean_biou']):>8}"
        )
    if c["dataset_iou"] is not None and r["dataset_iou"] is not None:
        gain_iou = 100.0 * (r["dataset_iou"] - c["dataset_iou"])
        gain_mba = (
            100.0 * (r["mean_mba"] - c["mean_mba"])
            if r["mean_mba"] is not None and c["mean_mba"] is not None
            else None
        )
        lines.append(f"{'gain':<10} {gain_iou:>+8.2f} {'-' if gain_mba is None else f'{gain_mba:+.2f}':>8}")
    lines.append(f"IoU: total intersection / total union; mBA, BIoU: mean over {unit}")
    return "\n".join(lines)


def format_counts(pairs: list[tuple[str, Any]]) -> str:
    """Two aligned columns ``name  value``."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in pairs)
