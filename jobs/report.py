"""``samsr report OUTPUT``: a static HTML report (overlays, plots, worst cases) of a refine output.

    samsr report ./out/demo                      # -> ./out/demo/report/index.html
    samsr report s3://bucket/out --out ./report --worst 12 --best 4
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "samsr report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write a self-contained HTML report (one folder, no network) of a samsr refine output: "
        "run facts, coarse vs refined table, plots, the worst and best samples as contour overlays, "
        "failures by type.")
    p.add_argument("output", help="the refine job's output prefix (any fsspec URL)")
    p.add_argument("--out", default=None, help="report folder (default OUTPUT/report)")
    p.add_argument("--worst", type=int, default=8, help="worst samples shown (default 8)")
    p.add_argument("--best", type=int, default=8, help="best samples shown (default 8)")
    p.add_argument("--thumb", type=int, default=480, help="thumbnail long side in px (default 480)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None, prog: str = "samsr report") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.worst < 0 or args.best < 0 or args.thumb < 32:
        print(f"{prog}: error: --worst/--best must be >= 0 and --thumb >= 32", file=sys.stderr)
        return 2
    from pipeline.report import build_report

    try:
        index = build_report(args.output, args.out, args.worst, args.best, args.thumb, not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
