"""SQL over refine manifests with DuckDB (in-process; local, S3 or any fsspec URL).

    samsr query ./out/demo "SELECT key, iou_refined, mba_refined FROM manifest ORDER BY mba_refined LIMIT 5"
    samsr query s3://bucket/runs/big --summary
    samsr query s3://bucket/runs/big --worst 50            # worst 50 images by refined mBA
    samsr query s3://bucket/runs/big --worst 20 --by iou
    samsr query s3://bucket/runs/relabel --worst 50 --by trust  # least trusted first (no truth needed)
    samsr query s3://bucket/runs/big --failures --format csv
    python -m jobs.query ./out/demo --summary

MANIFEST_PREFIX is the job's output prefix (or its ``manifest/`` folder). Tables:
``manifest`` (every row: one per sample and attempt) and ``latest`` (one row per key: its
newest ok row, else its newest row). Remote manifests are read through the fsspec filesystem
registered with DuckDB (no httpfs extension is installed or needed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from typing import Any

from pipeline.query import FAILURES_SQL, HAS_GT_SQL, SUMMARY_SQL, WORST_BY, connect, query, worst_sql

__all__ = ["SUMMARY_SQL", "FAILURES_SQL", "worst_sql", "connect", "query", "main"]


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def format_rows(columns: list[str], rows: list[tuple], fmt: str = "table", max_width: int = 60) -> str:
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(columns, r)), default=str) for r in rows)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(columns)
        w.writerows([["" if v is None else v for v in r] for r in rows])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 3] + "..." for c in r] for r in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, "-" * len(line), *body, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def build_parser(prog: str = "samsr query") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="SQL over a refine job's Parquet manifest with DuckDB. Tables: 'manifest' (one row per "
        "sample and attempt) and 'latest' (one row per key). Local paths, s3:// and other fsspec URLs.",
    )
    p.add_argument(
        "prefix", metavar="MANIFEST_PREFIX", help="the job's output prefix (or its manifest/ folder)"
    )
    p.add_argument("sql", nargs="?", help='a SQL query, e.g. "SELECT count(*) FROM manifest"')
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--summary", action="store_true", help="counts, dataset IoU and mean mBA per job and method"
    )
    g.add_argument("--worst", type=int, metavar="N", help="the N ok samples with the lowest refined metric")
    g.add_argument("--failures", action="store_true", help="failed samples grouped by error type")
    p.add_argument("--by", choices=["auto", *sorted(WORST_BY)], default="auto",
                   help="metric for --worst (default auto: mba with ground truth, else trust: the quality "
                   "estimate, least trusted first)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    return p


def main(argv: list[str] | None = None, prog: str = "samsr query") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    chosen = [args.sql is not None, args.summary, args.worst is not None, args.failures]
    if sum(chosen) != 1:
        parser.error("give exactly one of: SQL, --summary, --worst N, --failures")
    try:
        if args.summary:
            sql = SUMMARY_SQL
        elif args.failures:
            sql = FAILURES_SQL
        elif args.worst is not None:
            by = args.by
            if by == "auto":
                by = "mba" if query(args.prefix, HAS_GT_SQL)[1][0][0] else "trust"
            sql = worst_sql(args.worst, by)
        else:
            sql = args.sql
        columns, rows = query(args.prefix, sql)
    except Exception as e:  # noqa: BLE001 - DuckDB and storage errors are user-facing here
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(format_rows(columns, rows, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
