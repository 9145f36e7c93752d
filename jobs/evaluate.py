"""Evaluate a refine job from its manifest: the thesis-style table of coarse vs refined masks.

    samsr evaluate ./out/demo
    samsr evaluate s3://bucket/runs/big --job-id big-1a2b3c4d --json
    python -m jobs.evaluate ./out/demo

Uses the latest row per sample (a resumed job counts each sample once). Dataset IoU is total
intersection over total union over all images with ground truth; mBA and Boundary IoU are
means over images (DESIGN 3). Without ground truth it reports the coarse-vs-refined change.
Exit status: 0, or 1 when the manifest has no rows.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["build_parser", "run", "main"]


def build_parser(prog: str = "samsr evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Dataset IoU and mean mBA / Boundary IoU of coarse vs refined masks, "
        "from a job's manifest.",
    )
    p.add_argument(
        "prefix", metavar="OUTPUT_PREFIX", help="the refine job's output prefix (local or fsspec URL)"
    )
    p.add_argument(
        "--job-id", metavar="ID", help="only rows of this job id (default: all rows under the prefix)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(prefix: str, job_id: str | None = None) -> dict:
    """Summary dict of the manifest under ``prefix`` (see pipeline.summary.summarize_manifest)."""
    from pipeline.io import read_manifest
    from pipeline.summary import summarize_manifest

    return summarize_manifest(read_manifest(prefix), job_id=job_id)


def main(argv: list[str] | None = None, prog: str = "samsr evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    summary = run(args.prefix, args.job_id)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        from pipeline.summary import format_counts, format_quality_table

        errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["error_types"].items())) or "-"
        print(
            format_counts(
                [
                    ("manifest", args.prefix),
                    ("methods", ", ".join(summary["methods"]) or "-"),
                    ("samples", f"{summary['samples']} (ok {summary['ok']}, failed {summary['error']})"),
                    ("failures by type", errors),
                ]
            )
        )
        print()
        print(format_quality_table(summary))
    if summary["samples"] == 0:
        print(f"{prog}: no manifest rows under {args.prefix}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
