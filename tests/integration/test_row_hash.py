"""`row_hash` through a real stack: every part of a PostgreSQL export (numerics, text, arrays,
jsonb, uuid, timestamps, NULLs) carries a `_row_hash` equal to the reference encoding's xxh3
over the exported values; the manifest says what it covers; after three rows change in the
source, exactly those three ids get another hash in the next run (the `_exported_at` column
of every row changed, and is not covered); `validate --depth full` recomputes the hashes and
catches a value changed behind the column checksums' back. On SQLite, `row_hash: [name]`
covers that column only, and a column the export lacks fails the plan naming it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import colstats, fingerprint, layout
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2
from tests.support.localpg import LocalPostgres
from tests.support.rowref import as_int64, reference_rows
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

ROWS = 20_000
PG_CREATE = f"""
DROP TABLE IF EXISTS accounts;
CREATE TABLE accounts (
  id bigint PRIMARY KEY, name text, balance numeric(12, 2), tags text[], doc jsonb,
  seen timestamptz, u uuid, active boolean);
INSERT INTO accounts
SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE 'account ' || g END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE (g * 1.25)::numeric(12, 2) END,
       ARRAY['t' || (g % 5), NULL, 'x'],
       jsonb_build_object('k', g, 'even', g % 2 = 0),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
       md5(g::text)::uuid, g % 3 = 0
FROM generate_series(1, {ROWS}) AS g;
"""
CHANGES = """
UPDATE accounts SET name = 'renamed' WHERE id = 5;
UPDATE accounts SET balance = NULL WHERE id = 7;
UPDATE accounts SET tags = tags || ARRAY['new'] WHERE id = 9;
"""
COLUMNS = ["id", "name", "balance", "tags", "doc", "seen", "u", "active"]

CONFIG = """
sources:
  pg: {{engine: postgres, url_env: ACCOUNTS_URL}}
  lite: {{engine: sqlite, path: {sqlite}}}
exports:
  - name: accounts
    source: pg
    table: accounts
    mode: chunked
    chunk_column: id
    chunk_size: 5000
    destination: {dest}
    row_hash: true
    add_exported_at: true
  - name: names
    source: lite
    table: items
    mode: full
    destination: {dest}
    row_hash: [name]
  - name: missing
    source: lite
    table: items
    mode: full
    destination: {dest}
    row_hash: [name, nope]
"""


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, pg: LocalPostgres
) -> Iterator[Stack]:
    pg.psql_admin(PG_CREATE)
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "ACCOUNTS_URL": pg.url}
    started = start_stack(tmp_path / "state", workers=2, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    lite = tmp_path / "items.db"
    with sqlite3.connect(lite) as con:
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        con.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(i, None if i % 4 == 0 else f"item {i}", i * 0.5) for i in range(1, 101)],
        )
    path = tmp_path / "sluiceway.yaml"
    path.write_text(CONFIG.format(sqlite=lite, dest=tmp_path / "out"))
    return path


def _run(stack: Stack, config: Path, export: str) -> tuple[Path, dict[str, object]]:
    summary = run_export(stack, config, export)
    assert summary.status == events_pb2.RUN_STATUS_SUCCEEDED, summary.error_message
    run_dir = layout.run_dir(str(config.parent / "out"), export, summary.run_id)
    return run_dir, json.loads((run_dir / "manifest.json").read_text())


def _parts(run_dir: Path, manifest: dict[str, object]) -> pa.Table:
    parts = manifest["parts"]
    assert isinstance(parts, list) and parts
    return pa.concat_tables([pq.read_table(run_dir / p["path"]) for p in parts])


def _hashes_by_id(table: pa.Table) -> dict[int, int]:
    return dict(
        zip(table.column("id").to_pylist(), table.column("_row_hash").to_pylist(), strict=True)
    )


def _validate(run_dir: Path) -> tuple[int, dict[str, object]]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluiceway.cli.main",
            "validate",
            str(run_dir),
            "--json",
            "--depth",
            "full",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.returncode, json.loads(res.stdout)


def test_row_hashes_from_postgres_follow_the_rows(
    stack: Stack, config: Path, pg: LocalPostgres
) -> None:
    run_dir, manifest = _run(stack, config, "accounts")
    assert manifest["row_hash"] == {
        "column": "_row_hash",
        "algorithm": "xxh3_64",
        "encoding": "sluiceway-row-1",
        "columns": COLUMNS,  # every source column, not _exported_at
    }
    names = [f["name"] for f in manifest["schema"]]
    assert names == [*COLUMNS, "_exported_at", "_row_hash"]
    table = _parts(run_dir, manifest)
    assert table.num_rows == ROWS
    assert table.schema.field("_row_hash").type == pa.int64()
    # every row's hash is the reference's, over the values as exported
    for batch in table.to_batches(max_chunksize=4096):
        covered = [batch.column(c) for c in COLUMNS]
        expected = [as_int64(xxhash.xxh3_64_intdigest(b)) for b in reference_rows(covered)]
        assert batch.column("_row_hash").to_pylist() == expected
    first = _hashes_by_id(table)
    assert len(set(first.values())) == ROWS  # no two rows alike, no two hashes alike
    code, report = _validate(run_dir)
    assert code == 0 and report["passed"], report

    pg.psql_admin(CHANGES)
    run_dir2, manifest2 = _run(stack, config, "accounts")
    second = _hashes_by_id(_parts(run_dir2, manifest2))
    assert sorted(i for i in first if first[i] != second[i]) == [5, 7, 9]

    # a value changed, its column checksum and the file fingerprint made to agree: the row
    # hash, recomputed from the values, still tells
    part = manifest2["parts"][0]
    path = run_dir2 / part["path"]
    t = pq.read_table(path)
    names_col = t.column("name").to_pylist()
    names_col[1] = "tampered"
    t = t.set_column(t.schema.get_field_index("name"), "name", pa.array(names_col, pa.string()))
    pq.write_table(t, path, compression="zstd")
    stats = colstats.PartStats(t.schema)
    for b in t.to_batches():
        stats.update(b)
    part["column_checksums"] = stats.checksums()
    part["content_fingerprint"], part["size_bytes"] = fingerprint.of_file(path)
    data = json.dumps(manifest2, indent=2).encode()
    (run_dir2 / "manifest.json").write_bytes(data)
    (run_dir2 / "_SUCCESS").write_text(fingerprint.of_bytes(data))
    code, report = _validate(run_dir2)
    assert code == 3 and report["codes"] == ["ROW_HASH_MISMATCH"], report
    (failure,) = report["failures"]
    assert failure["part"] == part["path"] and "(the first: row 1)" in failure["message"]


def test_a_named_column_and_a_missing_one_on_sqlite(stack: Stack, config: Path) -> None:
    run_dir, manifest = _run(stack, config, "names")
    assert manifest["row_hash"]["columns"] == ["name"]
    table = _parts(run_dir, manifest)
    expected = [
        as_int64(xxhash.xxh3_64_intdigest(b))
        for b in reference_rows([table.column("name").combine_chunks()])
    ]
    assert table.column("_row_hash").to_pylist() == expected
    # equal names, equal hashes, whatever the other columns (every NULL name alike)
    nulls = {
        h for n, h in zip(table.column("name").to_pylist(), expected, strict=True) if n is None
    }
    assert len(nulls) == 1

    summary = run_export(stack, config, "missing")
    assert summary.status == events_pb2.RUN_STATUS_FAILED
    assert "row_hash: no column 'nope' in the export" in summary.error_message
