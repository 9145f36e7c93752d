"""The SQL over refine manifests, in one place (DuckDB, in-process; local, S3 or any fsspec URL).

Views: ``manifest`` (every row: one per sample and attempt) and ``latest`` (one row per key: its
newest ok row, a reviewer's first, else its newest row; ``pipeline.io.manifest_sql.LATEST_SQL``,
also behind ``pipeline.io.latest_rows``). The summary's dataset IoU is total intersection over total union
(DESIGN 3), as ``pipeline.metrics.aggregate_metrics`` computes it. Remote manifests are read
through the fsspec filesystem registered with DuckDB (no httpfs extension is installed).
Used by ``samsr query``, ``samsr evaluate`` and ``samsr report`` through their jobs.
"""

from __future__ import annotations

from typing import Any

from pipeline.io.manifest_sql import LATEST_SQL, duckdb_connect

__all__ = ["WORST_BY", "HAS_GT_SQL", "LATEST_SQL", "SUMMARY_SQL", "FAILURES_SQL", "worst_sql", "connect",
           "query"]

SUMMARY_SQL = """
SELECT job_id, method,
       count(*) AS samples,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       count(*) FILTER (WHERE status = 'error') AS failed,
       count(union_refined) AS with_gt,
       round(100 * sum(intersection_coarse) / sum(union_coarse), 2) AS iou_coarse_pct,
       round(100 * sum(intersection_refined) / sum(union_refined), 2) AS iou_refined_pct,
       round(100 * avg(mba_coarse), 2) AS mba_coarse_pct,
       round(100 * avg(mba_refined), 2) AS mba_refined_pct,
       round(avg(t_total_ms), 1) AS mean_ms
FROM latest GROUP BY ALL ORDER BY job_id, method
"""

FAILURES_SQL = """
SELECT error_type, count(*) AS samples, min(key) AS example_key,
       arg_min(error_message, key) AS example_message
FROM latest WHERE status = 'error' GROUP BY error_type ORDER BY samples DESC, error_type
"""

WORST_BY = {"mba": "mba_refined", "iou": "iou_refined", "biou": "biou_refined",
            "gain": "mba_refined - mba_coarse", "trust": "trust_score", "change": "change_iou"}

#: with or without ground truth: which --by ``auto`` means
HAS_GT_SQL = "SELECT count(mba_refined) > 0 FROM latest WHERE status = 'ok'"


_ALIAS = {"gain": "mba_gain", "trust": "trust_score", "change": "change_iou"}


def worst_sql(n: int, by: str = "mba") -> str:
    """The ``n`` ok samples with the lowest refined metric ``by`` (mba, iou, biou, gain in mBA, or
    trust: the quality estimate without ground truth, the least trusted first; change: IoU of
    coarse and refined, the most changed first)."""
    if by not in WORST_BY:
        raise ValueError(f"--by: must be one of {', '.join(WORST_BY)} (got {by!r})")
    if n < 1:
        raise ValueError(f"--worst: must be >= 1 (got {n})")
    expr = WORST_BY[by]
    return f"""
SELECT key, round({expr}, 4) AS {_ALIAS.get(by, by)},
       iou_coarse, iou_refined, mba_coarse, mba_refined, accepted, width, height, output_uri
FROM latest WHERE status = 'ok' AND ({expr}) IS NOT NULL
ORDER BY {expr} ASC, key LIMIT {int(n)}
"""


def _parts_glob(prefix: str) -> tuple[str, Any]:
    """(glob URL of the manifest parts, filesystem to register or None for local paths)."""
    from pipeline.io import is_local, join_uri, manifest_dir, open_fs

    uri = prefix.rstrip("/")
    fs, path = open_fs(uri)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    if not uri.endswith("/manifest") and fs.isdir(path + "/manifest"):
        uri = manifest_dir(uri)
    glob = join_uri(uri, "part-*.parquet")
    return glob, (None if is_local(uri) else fs)


def _duck_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    return {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
            pa.bool_(): "BOOLEAN"}[t]


def connect(prefix: str):
    """A DuckDB connection with views ``manifest`` and ``latest`` over the parts under ``prefix``."""
    from pipeline.io import MANIFEST_SCHEMA, open_fs

    con = duckdb_connect()
    glob, fs = _parts_glob(prefix)
    if fs is not None:
        con.register_filesystem(fs)
    fs_all, path = open_fs(glob)
    if fs_all.glob(path):
        parts = f"read_parquet('{glob}', union_by_name = true)"
        con.execute(f"CREATE VIEW manifest_parts AS SELECT * FROM {parts}")
        have = {r[0] for r in con.execute("DESCRIBE manifest_parts").fetchall()}
        # columns newer than every part (an old manifest): null, so the views and rules still work
        extra = "".join(f", CAST(NULL AS {_duck_type(f.type)}) AS {f.name}"
                        for f in MANIFEST_SCHEMA if f.name not in have)
        con.execute(f"CREATE VIEW manifest AS SELECT *{extra} FROM manifest_parts")
    else:  # no parts yet: an empty table with the schema, so every query still works
        con.register("manifest_empty", MANIFEST_SCHEMA.empty_table())
        con.execute("CREATE VIEW manifest AS SELECT * FROM manifest_empty")
    con.execute(f"CREATE VIEW latest AS {LATEST_SQL}")
    return con


def query(prefix: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Run ``sql`` against the manifest under ``prefix``; returns (column names, rows)."""
    con = connect(prefix)
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()
