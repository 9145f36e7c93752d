"""Static HTML reports of refine outputs (``samsr report``)."""

from pipeline.report.build import build_report, rank_samples

__all__ = ["build_report", "rank_samples"]
