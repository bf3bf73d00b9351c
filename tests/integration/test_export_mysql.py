"""MariaDB exports end to end over the real parts: a stack of processes (planner, committer,
tracker, 2 workers) on a real nats-server, reading a throwaway MariaDB server. Each mode is
checked on its outcome: the manifest, the part files, and a checksum of every row computed
by MariaDB and by DuckDB over the parts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import fingerprint, layout
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2, tracker_pb2
from tests.support.localmaria import PASSWORD, LocalMariaDB
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

ROWS = 200_000
DAY = 86_400

CREATE = f"""
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (
  id bigint PRIMARY KEY,
  customer_id int unsigned NOT NULL,
  name varchar(64) NOT NULL,
  amount decimal(12,2) NOT NULL,
  payload json,
  created_at timestamp(6) NOT NULL DEFAULT '2026-01-01 00:00:00',
  updated_at datetime(6) NOT NULL,
  note text
) CHARACTER SET utf8mb4;
INSERT INTO orders
SELECT seq,
       (seq * 7919) % 100000,
       CONCAT('Ĉliento ', seq, ' 東京 ☕'),
       ((seq * 37) % 1000000) / 100 - 2500,
       IF(seq % 10 = 0, NULL, JSON_OBJECT('sku', CONCAT('S', seq % 977), 'qty', seq % 13)),
       TIMESTAMP'2026-01-01 00:00:00' + INTERVAL (seq * 7) SECOND,
       TIMESTAMP'2026-02-01 00:00:00' + INTERVAL seq SECOND,
       IF(seq % 3 = 0, NULL, CONCAT('note ', seq % 101))
FROM seq_1_to_{ROWS};
ANALYZE TABLE orders;
"""

# One text line per row, rendered identically by MariaDB and DuckDB, hashed in id order.
ROW_TEXT_MY = (
    "CONCAT_WS('|', id, customer_id, name, amount, COALESCE(payload, '<null>'), "
    "CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS UNSIGNED), "
    "DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f'), COALESCE(note, '<null>'))"
)
ROW_TEXT_DUCK = (
    "concat_ws('|', id, customer_id, name, amount::varchar, coalesce(payload, '<null>'), "
    "epoch_us(created_at), strftime(updated_at, '%Y-%m-%d %H:%M:%S.%f'), "
    "coalesce(note, '<null>'))"
)

CONFIG = """
sources:
  shop: {{engine: mysql, url_env: ORDERS_MY_URL}}
exports:
  - name: orders
    source: shop
    table: orders
    mode: chunked
    chunk_size: 25000
    destination: {dest}
  - name: changes
    source: shop
    table: orders
    mode: incremental
    cursor_column: updated_at
    chunk_column: id
    chunk_size: 50000
    destination: {dest}
  - name: by_day
    source: shop
    table: orders
    mode: chunked
    chunk_column: created_at
    chunk_by_days: 1
    destination: {dest}
  - name: big_spenders
    source: shop
    query: "SELECT id, name, amount FROM orders WHERE amount > 2000 AND note IS NOT NULL"
    destination: {dest}
  - name: missing
    source: shop
    table: no_such_table
    destination: {dest}
  - name: recent
    source: shop
    table: recent
    mode: time_window
    time_column: at
    days_window: 2
    destination: {dest}
"""


@pytest.fixture(scope="module")
def orders(maria: LocalMariaDB) -> LocalMariaDB:
    maria.sql_admin(CREATE)
    return maria


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, nats_server: LocalNats, orders: LocalMariaDB
) -> Iterator[Stack]:
    env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": "my" + os.urandom(4).hex(),
        "ORDERS_MY_URL": orders.url,
    }
    started = start_stack(
        tmp_path_factory.mktemp("mystack") / "state", workers=2, nats_url=nats_server.url, env=env
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("myconf")
    path = base / "exports.yaml"
    path.write_text(CONFIG.format(dest=base / "out"))
    return path


def _run(stack: Stack, config: Path, export: str) -> tracker_pb2.RunSummary:
    return run_export(stack, config, export, timeout_s=300)


def _my_checksum(maria: LocalMariaDB, where: str = "") -> str:
    """MD5 of the rows as MariaDB renders them, one line each in id order (hashed here: a
    GROUP_CONCAT of them would be cut at max_allowed_packet)."""
    text = maria.sql_admin(
        f"SET SESSION time_zone = '+00:00'; SELECT {ROW_TEXT_MY} FROM orders {where} ORDER BY id"
    )
    return hashlib.md5(text.encode()).hexdigest()


def _duck_checksum(paths: list[Path]) -> str:
    files = [str(p) for p in paths]
    (value,) = duckdb.execute(
        f"SELECT md5(string_agg({ROW_TEXT_DUCK}, chr(10) ORDER BY id)) FROM read_parquet(?)",
        [files],
    ).fetchone()
    return str(value)


def _committed(config: Path, export: str, run: tracker_pb2.RunSummary) -> tuple[dict, list[Path]]:
    """The run's manifest, checked against its _SUCCESS and its parts' fingerprints."""
    out = str(config.parent / "out")
    manifest_bytes = layout.manifest_path(out, export, run.run_id).read_bytes()
    assert layout.success_path(out, export, run.run_id).read_text().strip() == (
        fingerprint.of_bytes(manifest_bytes)
    )
    manifest = json.loads(manifest_bytes)
    run_dir = layout.run_dir(out, export, run.run_id)
    paths = [run_dir / p["path"] for p in manifest["parts"]]
    for part, path in zip(manifest["parts"], paths, strict=True):
        assert fingerprint.of_file(path) == (part["content_fingerprint"], part["size_bytes"])
    assert manifest["row_count"] == sum(p["rows"] for p in manifest["parts"])
    return manifest, paths


async def test_a_chunked_table_export_on_its_primary_key_equals_the_source(
    stack: Stack, config: Path, orders: LocalMariaDB
) -> None:
    run = await asyncio.to_thread(_run, stack, config, "orders")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    assert run.reconciled and run.source_count == ROWS == run.total_rows
    manifest, paths = _committed(config, "orders", run)
    assert manifest["row_count"] == ROWS and manifest["part_count"] >= ROWS // 25000
    assert manifest["source"]["engine"] == "mysql"
    assert _duck_checksum(paths) == _my_checksum(orders)
    schema = {c["name"]: c["type"] for c in manifest["schema"]}
    assert schema["amount"] == "decimal128(12, 2)"
    assert schema["customer_id"] == "uint32"
    assert schema["created_at"] == "timestamp[us, tz=UTC]"
    assert schema["updated_at"] == "timestamp[us]"
    assert PASSWORD not in json.dumps(manifest)


async def test_an_incremental_export_reads_only_the_rows_after_its_cursor(
    stack: Stack, config: Path, orders: LocalMariaDB
) -> None:
    first = await asyncio.to_thread(_run, stack, config, "changes")
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    assert first.total_rows == ROWS
    _, paths = _committed(config, "changes", first)
    assert _duck_checksum(paths) == _my_checksum(orders)

    orders.sql_admin(
        "UPDATE orders SET note = 'changed', updated_at = TIMESTAMP'2027-01-01 00:00:00' "
        "+ INTERVAL id MICROSECOND WHERE id % 20000 = 7"
    )
    second = await asyncio.to_thread(_run, stack, config, "changes")
    assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
    assert second.total_rows == ROWS // 20000
    manifest, paths = _committed(config, "changes", second)
    assert _duck_checksum(paths) == _my_checksum(orders, "WHERE id % 20000 = 7")
    assert manifest["source"]["cursor_column"] == "updated_at"
    # the highest updated row: id 180007, a microsecond key kept exactly
    assert manifest["source"]["cursor_high"] == "2027-01-01T00:00:00.180007"

    third = await asyncio.to_thread(_run, stack, config, "changes")
    assert third.status == events_pb2.RUN_STATUS_SKIPPED, third.error_message


async def test_a_timestamp_key_is_chunked_by_days_in_utc(
    stack: Stack, config: Path, orders: LocalMariaDB
) -> None:
    run = await asyncio.to_thread(_run, stack, config, "by_day")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    span_days = -(-(ROWS * 7) // DAY)  # created_at spans ROWS * 7 s from midnight UTC
    assert run.chunks_total in (span_days, span_days + 1)
    manifest, paths = _committed(config, "by_day", run)
    assert manifest["row_count"] == ROWS
    assert _duck_checksum(paths) == _my_checksum(orders)


async def test_a_query_export_reads_what_the_query_selects(
    stack: Stack, config: Path, orders: LocalMariaDB
) -> None:
    run = await asyncio.to_thread(_run, stack, config, "big_spenders")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    expected = int(
        orders.sql_admin("SELECT COUNT(*) FROM orders WHERE amount > 2000 AND note IS NOT NULL")
    )
    assert run.total_rows == expected > 0
    _, paths = _committed(config, "big_spenders", run)
    (total,) = duckdb.execute(
        "SELECT sum(amount) FROM read_parquet(?)", [[str(p) for p in paths]]
    ).fetchone()
    assert str(total) == orders.sql_admin(
        "SELECT SUM(amount) FROM orders WHERE amount > 2000 AND note IS NOT NULL"
    )


async def test_a_missing_table_fails_the_run_naming_the_error(stack: Stack, config: Path) -> None:
    run = await asyncio.to_thread(_run, stack, config, "missing")
    assert run.status == events_pb2.RUN_STATUS_FAILED
    assert "1146" in run.error_message and "no_such_table" in run.error_message
    assert PASSWORD not in run.error_message


async def test_a_time_window_reads_the_rows_of_its_last_days_in_utc(
    stack: Stack, config: Path, orders: LocalMariaDB
) -> None:
    # one row an hour over the last 5 days, by the server's UTC clock: the window holds those
    # at or after midnight UTC days_window (2) days before the run
    orders.sql_admin(
        "DROP TABLE IF EXISTS recent; "
        "CREATE TABLE recent (id int PRIMARY KEY, at timestamp(6) NOT NULL "
        "DEFAULT '2026-01-01 00:00:00'); SET time_zone = '+00:00'; "
        "INSERT INTO recent SELECT seq, UTC_TIMESTAMP(6) - INTERVAL seq HOUR FROM seq_1_to_120;"
    )

    def in_window() -> int:
        return int(
            orders.sql_admin(
                "SET time_zone = '+00:00'; SELECT COUNT(*) FROM recent "
                "WHERE at >= UTC_DATE() - INTERVAL 2 DAY"
            )
        )

    before = in_window()
    run = await asyncio.to_thread(_run, stack, config, "recent")
    after = in_window()  # the same, unless midnight UTC passed during the run
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    assert 48 <= before < 120
    assert run.total_rows in (before, after) and run.reconciled
