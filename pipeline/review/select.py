"""Which objects go to review: keys of the manifest's ``latest`` view (DuckDB, ``pipeline.query``).

- ``worst``: ``pipeline.query.worst_sql`` (the ``samsr query --worst`` ranking) by ``by``;
  ``auto`` = ``trust`` (the trust score) when the manifest has one, else ``gain`` (mBA gain)
  with ground truth, else ``change`` (IoU of coarse and refined: the most changed first);
- ``sample``: ``n`` objects drawn at random (a hash of key and seed: the same seed, the same draw);
- ``where``: every object matching a SQL condition over the manifest's columns.

Only ``ok`` rows of objects (samples of samsr refine, instances and classes of samsr relabel;
never image rows) are chosen.
"""

from __future__ import annotations

__all__ = ["select_keys", "auto_by", "OBJECTS"]

#: ok rows of objects: not the image rows of samsr relabel
OBJECTS = "status = 'ok' AND coalesce(row_kind, '') <> 'image'"


def auto_by(prefix: str) -> str:
    """``trust`` if any object has a trust score, else ``gain`` with ground truth, else ``change``."""
    from pipeline.query import query

    sql = f"SELECT count(trust_score) > 0, count(mba_refined) > 0 FROM latest WHERE {OBJECTS}"
    trust, gt = query(prefix, sql)[1][0]
    return "trust" if trust else "gain" if gt else "change"


def select_keys(prefix: str, *, worst: int | None = None, by: str = "auto", sample: int | None = None,
                seed: int = 0, where: str | None = None) -> tuple[list[str], str]:
    """(keys in review order, a description of the choice). Exactly one of worst / sample / where."""
    from pipeline.query import query, worst_sql

    if sum(v is not None for v in (worst, sample, where)) != 1:
        raise ValueError("give exactly one of --worst N, --sample N, --where SQL")
    if worst is not None:
        by = auto_by(prefix) if by == "auto" else by
        # image rows of samsr relabel have no metric, so the ranking never picks them
        return [r[0] for r in query(prefix, worst_sql(worst, by))[1]], f"the {worst} worst by {by}"
    if sample is not None:
        if sample < 1:
            raise ValueError(f"--sample: must be >= 1 (got {sample})")
        sql = (f"SELECT key FROM latest WHERE {OBJECTS} ORDER BY hash(key || '/{int(seed)}'), key "
               f"LIMIT {int(sample)}")
        return [r[0] for r in query(prefix, sql)[1]], f"{sample} drawn at random (seed {seed})"
    sql = f"SELECT key FROM latest WHERE {OBJECTS} AND ({where}) ORDER BY key"
    return [r[0] for r in query(prefix, sql)[1]], f"where {where}"
