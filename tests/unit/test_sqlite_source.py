"""The SQLite source: declared types to Arrow, key ranges (NULL keys too), counts equal reads."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from sluiceway.common.domain.events import ChunkRange, ExportSpec, SourceSpec
from sluiceway.common.sources import SourceError, arrow_schema, arrow_type, open_source
from sluiceway.common.sources.sqlite import SqliteSource


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "src.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE orders (id INTEGER, qty INT, ratio REAL, name VARCHAR(20), "
        "price DECIMAL(12,2), placed TIMESTAMP, day DATE, paid BOOLEAN, blob BLOB)"
    )
    rows = [
        (
            i,
            i % 7,
            i / 4,
            f"o{i}",
            (f"{i}.{i % 100:02d}" if i % 2 else i + 0.25),
            f"2024-01-01 00:00:{i % 60:02d}",
            "2024-02-03",
            i % 2,
            bytes([i % 256]),
        )
        for i in range(1, 101)
    ]
    rows.append((None, None, None, None, None, None, None, None, None))
    con.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def _spec(db: Path, **kw: object) -> ExportSpec:
    base: dict[str, object] = dict(
        name="orders",
        source=SourceSpec(engine="sqlite", path=str(db)),
        table="orders",
        chunk_column="id",
        batch_size=16,
    )
    base.update(kw)
    return ExportSpec(**base)  # type: ignore[arg-type]


def test_declared_types_map_to_arrow(db: Path) -> None:
    src = SqliteSource(str(db))
    info = src.introspect(_spec(db))
    assert [(f.name, f.type) for f in info.schema] == [
        ("id", "int64"),
        ("qty", "int64"),
        ("ratio", "double"),
        ("name", "string"),
        ("price", "decimal128(12, 2)"),
        ("placed", "timestamp[us, tz=UTC]"),
        ("day", "date32[day]"),
        ("paid", "bool"),
        ("blob", "binary"),
    ]
    assert (info.key_low, info.key_high, info.key_nullable, info.row_estimate) == (
        "1",
        "100",
        True,
        101,
    )
    assert info.key_type == "int64"
    for f in info.schema:  # every type string parses back
        assert str(arrow_type(f.type)) == f.type


def test_values_are_converted_to_the_planned_types(db: Path) -> None:
    src = SqliteSource(str(db))
    spec = _spec(db)
    schema = src.introspect(spec).schema
    table = pa.Table.from_batches(
        list(src.read(spec, ChunkRange(start_key="3", end_key="5", end_inclusive=True), schema))
    )
    assert table.schema == arrow_schema(schema)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [3, 4, 5]
    assert rows[0]["price"] == Decimal("3.03") and rows[1]["price"] == Decimal("4.25")
    assert rows[0]["placed"] == datetime(2024, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert rows[0]["day"] == date(2024, 2, 3)
    assert [r["paid"] for r in rows] == [True, False, True]
    assert rows[0]["blob"] == b"\x03" and rows[0]["ratio"] == 0.75


@pytest.mark.parametrize(
    ("rng", "expected"),
    [
        (None, 101),
        (ChunkRange(start_key="1", end_key="51"), 50),
        (ChunkRange(start_key="51", end_key="100", end_inclusive=True), 50),
        (ChunkRange(end_key="11"), 10),
        (ChunkRange(start_key="91"), 10),
        (ChunkRange(null_keys=True), 1),
        (ChunkRange(start_key="500", end_key="600"), 0),
    ],
)
def test_ranges_read_exactly_what_count_counts(
    db: Path, rng: ChunkRange | None, expected: int
) -> None:
    src = SqliteSource(str(db))
    spec = _spec(db)
    batches = list(src.read(spec, rng, ()))
    assert sum(b.num_rows for b in batches) == expected == src.count(spec, rng)
    assert all(b.num_rows <= 16 for b in batches)
    if rng is not None and rng.null_keys:
        assert batches[0].column(0).null_count == 1


def test_a_query_and_a_column_subset_are_exported(db: Path) -> None:
    src = open_source(_spec(db, table="", query="SELECT id, name, qty * 2 AS dbl FROM orders"))
    spec = _spec(db, table="", query="SELECT id, name, qty * 2 AS dbl FROM orders")
    info = src.introspect(spec)
    assert [(f.name, f.type) for f in info.schema] == [
        ("id", "int64"),
        ("name", "string"),
        ("dbl", "int64"),
    ]
    assert src.count(spec, ChunkRange(start_key="1", end_key="11")) == 10
    sub = _spec(db, columns=("name", "id"))
    (first, *_) = SqliteSource(str(db)).read(sub, ChunkRange(start_key="1", end_key="3"), ())
    assert first.schema.names == ["name", "id"] and first.num_rows == 2


def test_a_missing_table_is_a_permanent_error(db: Path) -> None:
    src = SqliteSource(str(db))
    with pytest.raises(SourceError) as err:
        list(src.read(_spec(db, table="nope"), None, ()))
    assert not err.value.retryable


def test_a_missing_database_file_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        SqliteSource(str(tmp_path / "absent.db"))
    assert not err.value.retryable


def test_the_source_is_read_only(db: Path) -> None:
    src = SqliteSource(str(db))
    with pytest.raises(sqlite3.OperationalError):
        src._con.execute("DELETE FROM orders")
