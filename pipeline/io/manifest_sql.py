"""The manifest's "latest row per key" rule as SQL, and the DuckDB connection every manifest query
uses (no extension is installed or loaded: offline machines work). ``pipeline.io.latest_rows``
applies the rule to a table in memory; ``pipeline.query`` builds its ``latest`` view from it.
"""

from __future__ import annotations

__all__ = ["LATEST_ORDER", "LATEST_SQL", "duckdb_connect", "arrow_of", "latest_of_table"]

# The "latest row per key" rule: its newest ok row, else its newest row (later attempts win ties);
# a reviewer's row (source = 'human', samsr review import) beats every row of the pipeline.
LATEST_ORDER = ("(status = 'ok') DESC, coalesce(source = 'human', false) DESC, finished_at DESC NULLS LAST, "
                "attempt DESC NULLS LAST")
LATEST_SQL = f"""
SELECT * FROM manifest
QUALIFY row_number() OVER (PARTITION BY key ORDER BY {LATEST_ORDER}) = 1
"""



def duckdb_connect():
    """An in-memory DuckDB connection that never installs or loads an extension by itself."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    return con


def arrow_of(rel):
    """A DuckDB relation's rows as a pyarrow table (a relation, not a DB-API cursor: DuckDB 2.x
    warns that a cursor's Arrow output is a copy; ``to_arrow_table`` in 2.x, ``fetch_arrow_table``
    in 1.x)."""
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()


def latest_of_table(table):
    """:data:`LATEST_SQL` over an in-memory manifest table (pyarrow), rows in key order."""
    con = duckdb_connect()
    try:
        con.register("manifest", table)
        rel = con.sql(f"SELECT * FROM ({LATEST_SQL}) ORDER BY key")
        return arrow_of(rel).cast(table.schema)
    finally:
        con.close()
