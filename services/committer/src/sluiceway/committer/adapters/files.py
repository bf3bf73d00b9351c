"""The destination directory: reading parts back, and crash-safe writes (temp, fsync, rename)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import duckdb

from sluiceway.common import fingerprint, layout
from sluiceway.common.parts import fsync_dir


def observe_parts(run_dir: Path, names: Iterable[str]) -> dict[str, tuple[str, int] | None]:
    """(fingerprint, size) of each part as it is on disk now; None when absent. Blocking."""
    out: dict[str, tuple[str, int] | None] = {}
    for name in names:
        path = run_dir / name
        try:
            out[name] = fingerprint.of_file(path) if path.is_file() else None
        except FileNotFoundError:
            out[name] = None
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn one, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / layout.temp_name(path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def observe_quality(
    paths: list[Path], fmt: str, nulls: list[str], unique: list[str]
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Rows, NULLs per column and repeated (non-NULL) values per column over every part, in one
    DuckDB scan. Blocking. Column names are validated identifiers (config.check_spec)."""
    if not paths:
        return 0, dict.fromkeys(nulls, 0), dict.fromkeys(unique, 0)
    terms = ["count(*)"]
    terms += [f"count(*) - count({_quoted(c)})" for c in nulls]
    terms += [f"count({_quoted(c)}) - count(DISTINCT {_quoted(c)})" for c in unique]
    reader = "read_parquet(?)" if fmt == "parquet" else "read_csv(?, header = true)"
    con = duckdb.connect(config={"threads": 1})
    try:
        row = con.execute(
            f"SELECT {', '.join(terms)} FROM {reader}", [[str(p) for p in paths]]
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    values = [int(v) for v in row]
    rows, rest = values[0], values[1:]
    return (
        rows,
        dict(zip(nulls, rest[: len(nulls)], strict=True)),
        dict(zip(unique, rest[len(nulls) :], strict=True)),
    )


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'
