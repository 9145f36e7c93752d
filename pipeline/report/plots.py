"""The report's plots (matplotlib, Agg backend): gains, coarse vs refined, time per stage."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["gain_histograms", "coarse_vs_refined", "change_histograms", "stage_times"]

STAGES = ("t_read_ms", "t_sam_ms", "t_refine_ms", "t_metrics_ms", "t_write_ms")


def _figure(w: float = 7.0, h: float = 3.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, 2, figsize=(w, h), dpi=100)


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def gain_histograms(rows: list[dict[str, Any]], path: str) -> str:
    """Per-image mBA and IoU gain (refined - coarse, points), with ground truth."""
    plt, fig, axes = _figure()
    for ax, m, name in zip(axes, ("mba", "iou"), ("mBA", "IoU")):
        gains = [100 * (r[f"{m}_refined"] - r[f"{m}_coarse"]) for r in rows
                 if r.get(f"{m}_refined") is not None and r.get(f"{m}_coarse") is not None]
        ax.hist(gains, bins=min(30, max(5, len(gains))), color="#3b7dd8")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"{name} gain (points)")
        ax.set_ylabel("images")
    return _save(plt, fig, path)


def coarse_vs_refined(rows: list[dict[str, Any]], path: str) -> str:
    """Scatter of coarse vs refined mBA and IoU per image (points above the diagonal improved)."""
    plt, fig, axes = _figure()
    for ax, m, name in zip(axes, ("mba", "iou"), ("mBA", "IoU")):
        pts = np.array([(100 * r[f"{m}_coarse"], 100 * r[f"{m}_refined"]) for r in rows
                        if r.get(f"{m}_refined") is not None and r.get(f"{m}_coarse") is not None])
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=10, color="#d8663b")
            lo, hi = float(pts.min()), float(pts.max())
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xlabel(f"coarse {name} %")
        ax.set_ylabel(f"refined {name} %")
    return _save(plt, fig, path)


def change_histograms(rows: list[dict[str, Any]], path: str) -> str:
    """Without ground truth: IoU(coarse, refined) and the share of changed pixels per image."""
    plt, fig, axes = _figure()
    names = ("IoU(coarse, refined) %", "changed pixels %")
    for ax, key, name in zip(axes, ("change_iou", "changed_fraction"), names):
        vals = [100 * r[key] for r in rows if r.get(key) is not None]
        ax.hist(vals, bins=min(30, max(5, len(vals))), color="#3b7dd8")
        ax.set_xlabel(name)
        ax.set_ylabel("images")
    return _save(plt, fig, path)


def stage_times(rows: list[dict[str, Any]], path: str) -> str:
    """Mean milliseconds per sample in each stage, and the distribution of the total."""
    plt, fig, axes = _figure()
    means = [float(np.mean([r[k] for r in rows if r.get(k) is not None] or [0.0])) for k in STAGES]
    axes[0].barh([k[2:-3] for k in STAGES], means, color="#5a9e5a")
    axes[0].set_xlabel("mean ms per sample")
    totals = [r["t_total_ms"] for r in rows if r.get("t_total_ms") is not None]
    axes[1].hist(totals, bins=min(30, max(5, len(totals))), color="#5a9e5a")
    axes[1].set_xlabel("total ms per sample")
    axes[1].set_ylabel("images")
    return _save(plt, fig, path)
