"""The destination (a directory or an object store): reading parts back, crash-safe writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from sluiceway.common import destination
from sluiceway.common.destination import Destination, Local


def observe_parts(
    run_dir: Path | str, names: Iterable[str], dest: Destination | None = None
) -> dict[str, tuple[str, int] | None]:
    """(fingerprint, size) of each part as it is stored now; None when absent. Blocking."""
    where = dest or Local(str(run_dir))
    return {name: where.fingerprint(where_join(where, run_dir, name)) for name in names}


def where_join(dest: Destination, directory: Path | str, name: str) -> str:
    if isinstance(dest, Local):
        return str(Path(directory) / name)
    return f"{str(directory).rstrip('/')}/{name}"


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn one, even after a crash."""
    destination.write_atomic(path, data)


def observe_quality(
    paths: list[Path] | list[str],
    fmt: str,
    nulls: list[str],
    unique: list[str],
    dest: Destination | None = None,
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Rows, NULLs per column and repeated (non-NULL) values per column over every part, in one
    DuckDB scan (of the files, or of a pyarrow dataset over an object store: DuckDB's httpfs
    is not there offline). Blocking. Column names are validated identifiers (config.check_spec)."""
    if not paths:
        return 0, dict.fromkeys(nulls, 0), dict.fromkeys(unique, 0)
    terms = ["count(*)"]
    terms += [f"count(*) - count({_quoted(c)})" for c in nulls]
    terms += [f"count({_quoted(c)}) - count(DISTINCT {_quoted(c)})" for c in unique]
    con = duckdb.connect(config={"threads": 1})
    try:
        if dest is None or isinstance(dest, Local):
            # the parts' own values: never a partition folder's name read as a column
            reader = (
                "read_parquet(?, hive_partitioning = false)"
                if fmt == "parquet"
                else "read_csv(?, header = true, hive_partitioning = false)"
            )
            row = con.execute(
                f"SELECT {', '.join(terms)} FROM {reader}", [[str(p) for p in paths]]
            ).fetchone()
        else:
            file_format: pads.FileFormat | str = "parquet"
            if fmt != "parquet":
                file_format = pads.CsvFileFormat(
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
                )
            parts = pads.dataset(
                [str(p) for p in paths], filesystem=dest.arrow(), format=file_format
            )
            con.register("parts", parts)
            row = con.execute(f"SELECT {', '.join(terms)} FROM parts").fetchone()
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
