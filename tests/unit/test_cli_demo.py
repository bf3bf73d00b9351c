"""The demo's verification: typed checksums agree across SQLite and Parquet, and catch a change."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluiceway.cli import demo, demodata
from sluiceway.v1 import tracker_pb2

COLUMNS = (("id", "INTEGER"), ("name", "TEXT"), ("amount", "DECIMAL(12,2)"), ("at", "TIMESTAMP"))


def setup(tmp_path: Path, *, tamper: bool = False) -> tuple[tracker_pb2.RunSummary, Path]:
    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount DECIMAL(12,2), at TIMESTAMP)"
    )
    rows = [
        (1, "Zoë 東京 🎉", "10.10", "2024-01-02 03:04:05"),
        (2, None, "7", None),
        (3, "x", "0.05", "2024-12-31 23:59:59"),
    ]
    con.executemany("INSERT INTO t VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()
    run = tmp_path / "out" / "t" / "runs" / "r1"
    run.mkdir(parents=True)
    amounts = [Decimal("10.10"), Decimal("7.00"), Decimal("0.05")]
    if tamper:
        amounts[2] = Decimal("0.06")
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "name": ["Zoë 東京 🎉", None, "x"],
            "amount": pa.array(amounts, pa.decimal128(12, 2)),
            "at": pa.array(
                [
                    datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                    None,
                    datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, run / "part-0.parquet")
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "row_count": 3,
                "format": "parquet",
                "parts": [{"path": "part-0.parquet", "rows": 3}],
            }
        )
    )
    summary = tracker_pb2.RunSummary(
        run_id="r1", export_name="t", manifest_uri=f"file://{run / 'manifest.json'}"
    )
    return summary, db


def test_typed_checksums_agree(tmp_path: Path) -> None:
    summary, db = setup(tmp_path)
    line = demo.verify(summary, str(tmp_path / "out"), db, table="t", columns=COLUMNS)
    assert line.startswith("verified: 3 rows in 1 parts")


def test_a_changed_value_is_caught(tmp_path: Path) -> None:
    summary, db = setup(tmp_path, tamper=True)
    with pytest.raises(demo.VerificationError, match="checksum mismatch"):
        demo.verify(summary, str(tmp_path / "out"), db, table="t", columns=COLUMNS)


def test_demo_data_is_deterministic_and_has_nulls(tmp_path: Path) -> None:
    db, created = demodata.ensure_demo_db(tmp_path / "d.db", rows=2000)
    assert created
    assert demodata.ensure_demo_db(db, rows=2000) == (db, False)
    with sqlite3.connect(db) as con:
        n, coupons, shipped = con.execute(
            "SELECT count(*), count(coupon_code), count(shipped_at) FROM orders"
        ).fetchone()
        first = con.execute("SELECT * FROM orders WHERE id = 1").fetchone()
    assert n == 2000 and 0 < coupons < n and 0 < shipped < n
    again, _ = demodata.ensure_demo_db(tmp_path / "e.db", rows=2000)
    with sqlite3.connect(again) as con:
        assert con.execute("SELECT * FROM orders WHERE id = 1").fetchone() == first
