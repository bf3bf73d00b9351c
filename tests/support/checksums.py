"""Order-free checksums of row multisets, and the rows to feed them from PostgreSQL and parts."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import duckdb
import psycopg

Row = tuple[object, ...]


def checksum(rows: Sequence[Row]) -> str:
    """An order-free checksum of a multiset of rows: a row read twice or missed changes it."""
    return hashlib.sha256("\n".join(sorted(map(repr, rows))).encode()).hexdigest()


def pg_rows(url: str, sql: str) -> list[Row]:
    """Every row `sql` returns from the PostgreSQL database at `url`."""
    with psycopg.connect(url) as con:
        return [tuple(r) for r in con.execute(sql)]


def part_rows(paths: Sequence[Path], columns: str) -> list[Row]:
    """`SELECT <columns>` over the given Parquet parts (DuckDB): only those files, so a part
    that no manifest lists is never counted."""
    with duckdb.connect() as con:
        query = f"SELECT {columns} FROM read_parquet(?)"
        return con.execute(query, [[str(p) for p in paths]]).fetchall()


def difference(expected: Sequence[Row], got: Sequence[Row]) -> str:
    """How two multisets of rows differ, for an assertion message: counts and one example."""
    want, have = Counter(expected), Counter(got)
    missing, extra = want - have, have - want
    example = next(iter(missing or extra), None)
    return (
        f"{missing.total()} row(s) missing, {extra.total()} extra "
        f"(of {len(expected)} expected, {len(got)} read); e.g. {example!r}"
    )
