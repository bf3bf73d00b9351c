"""The MySQL/MariaDB source against a real MariaDB server: every common type round-trips
through a Parquet part into DuckDB or fails naming its column, the count and rows come from
one session and one snapshot, and the server's errors are retryable or permanent by number."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pymysql
import pytest

from sluiceway.common.config import ConfigError, check_spec
from sluiceway.common.domain.events import ChunkRange, ExportSpec, SchemaField, SourceSpec
from sluiceway.common.parts import PartWriter
from sluiceway.common.sources import SourceError, arrow_schema, open_source
from sluiceway.common.sources.mysql import MySqlSource
from tests.support.localmaria import PASSWORD, LocalMariaDB

pytestmark = pytest.mark.integration

# name, MySQL type, literal of row 1, expected Arrow type, value read back (row 1)
COLUMNS: list[tuple[str, str, str, str, Any]] = [
    ("ti", "tinyint", "-128", "int8", -128),
    ("tiu", "tinyint unsigned", "255", "uint8", 255),
    ("si", "smallint", "-32768", "int16", -32768),
    ("siu", "smallint unsigned", "65535", "uint16", 65535),
    ("mi", "mediumint", "-8388608", "int32", -8388608),
    ("miu", "mediumint unsigned", "16777215", "uint32", 16777215),
    ("i", "int", "-2147483648", "int32", -2147483648),
    ("iu", "int unsigned", "4294967295", "uint32", 4294967295),
    ("bi", "bigint", "-9223372036854775808", "int64", -9223372036854775808),
    ("biu", "bigint unsigned", "18446744073709551615", "uint64", 18446744073709551615),
    ("bo", "boolean", "true", "int8", 1),
    ("d10", "decimal(10,2)", "-12345678.91", "decimal128(10, 2)", Decimal("-12345678.91")),
    (
        "d38",
        "decimal(38,10)",
        "1234567890123456789012345678.1234567890",
        "decimal128(38, 10)",
        Decimal("1234567890123456789012345678.1234567890"),
    ),
    (
        "d65",
        "decimal(65,30)",
        "12345678901234567890123456789012345.123456789012345678901234567890",
        "string",
        "12345678901234567890123456789012345.123456789012345678901234567890",
    ),
    ("du", "decimal(10,0) unsigned", "9999999999", "decimal128(10, 0)", Decimal("9999999999")),
    ("f", "float", "3.25", "float", 3.25),
    ("dbl", "double", "2.718281828459045", "double", 2.718281828459045),
    ("dt", "date", "'2026-03-04'", "date32[day]", date(2026, 3, 4)),
    ("dtt", "datetime", "'2026-03-04 05:06:07'", "timestamp[us]", datetime(2026, 3, 4, 5, 6, 7)),
    (
        "dtt6",
        "datetime(6)",
        "'9999-12-31 23:59:59.999999'",
        "timestamp[us]",
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ),
    (
        "ts",
        "timestamp(3) NULL",
        "'2026-03-04 05:06:07.123'",
        "timestamp[us, tz=UTC]",
        datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC),
    ),
    ("tm", "time", "'23:59:59'", "time64[us]", dtime(23, 59, 59)),
    ("tm6", "time(6)", "'12:34:56.654321'", "time64[us]", dtime(12, 34, 56, 654321)),
    ("yr", "year", "2026", "int16", 2026),
    ("c", "char(5)", "'ab'", "string", "ab"),
    ("vc", "varchar(100)", "'Ĉliento 東京 ☕ 😀'", "string", "Ĉliento 東京 ☕ 😀"),
    ("tx", "text", "'t\\'ext\\n'", "string", "t'ext\n"),
    ("ltx", "longtext", "REPEAT('x', 70000)", "string", "x" * 70000),
    ("bn", "binary(4)", "X'00010203'", "binary", b"\x00\x01\x02\x03"),
    ("vb", "varbinary(10)", "X'ff00'", "binary", b"\xff\x00"),
    ("bl", "blob", "X'deadbeef'", "binary", b"\xde\xad\xbe\xef"),
    ("js", "json", '\'{"a": [1, 2, {"b": null}]}\'', "string", '{"a": [1, 2, {"b": null}]}'),
    ("en", "enum('a','b','c')", "'b'", "string", "b"),
    ("st", "set('x','y','z')", "'x,z'", "string", "x,z"),
    ("b1", "bit(1)", "b'1'", "bool", True),
    ("b8", "bit(8)", "b'10101010'", "uint64", 170),
    ("b64", "bit(64)", "b'1" + "0" * 63 + "'", "uint64", 1 << 63),
]


@pytest.fixture(scope="module")
def types_table(maria: LocalMariaDB) -> Iterator[str]:
    cols = ", ".join(f"{name} {typ}" for name, typ, *_ in COLUMNS)
    values = ", ".join(lit for _, _, lit, *_ in COLUMNS)
    maria.sql_admin(
        "DROP TABLE IF EXISTS src_types; "
        f"CREATE TABLE src_types (id int PRIMARY KEY, {cols}); "
        f"INSERT INTO src_types VALUES (1, {values}); "
        "INSERT INTO src_types (id) VALUES (2);"  # NULL in every column
    )
    yield "src_types"
    maria.sql_admin("DROP TABLE src_types")


def spec_for(table: str = "", *, query: str = "", **kw: Any) -> ExportSpec:
    return ExportSpec(
        name="types",
        source=SourceSpec(engine="mysql", url_env="MY_URL"),
        table=table,
        query=query,
        **kw,
    )


def _source(maria: LocalMariaDB, **kw: Any) -> MySqlSource:
    source = open_source(spec_for("t", **kw), env={"MY_URL": maria.url})
    assert isinstance(source, MySqlSource)
    return source


def export(
    maria: LocalMariaDB, spec: ExportSpec, run_dir: Path
) -> tuple[tuple[SchemaField, ...], int, list[Path]]:
    """Introspect (as the planner does), then read and write the one chunk (as a worker does)."""
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = source.introspect(spec).schema
        writer = PartWriter(run_dir, 0, 1, "parquet", "zstd", 0, 0, arrow_schema(schema))
        count, batches = source.count_and_read(spec, None, schema)
        try:
            for batch in batches:
                writer.write(batch)
            parts = writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        source.close()
    return schema, count, [run_dir / p.file_name for p in parts]


@pytest.fixture(scope="module")
def exported(
    maria: LocalMariaDB, types_table: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[SchemaField, ...], int, list[Path]]:
    return export(maria, spec_for(types_table), tmp_path_factory.mktemp("types"))


def _rows(paths: list[Path]) -> list[dict[str, Any]]:
    """The parts' rows as Parquet holds them, in id order."""
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_the_planned_types_are_the_documented_ones(exported: Any) -> None:
    schema, _, _ = exported
    planned = {f.name: f.type for f in schema}
    assert planned == {"id": "int32", **{name: arrow for name, _, _, arrow, _ in COLUMNS}}
    by_name = {f.name: f for f in schema}
    assert not by_name["id"].nullable and by_name["ti"].nullable
    assert by_name["d65"].source_type == "decimal(65,30)"
    assert by_name["biu"].source_type == "bigint unsigned"
    assert by_name["dtt6"].source_type == "datetime(6)"


def test_every_value_reads_back_as_the_server_holds_it(exported: Any) -> None:
    _, count, paths = exported
    assert count == 2
    first, nulls = _rows(paths)
    for name, _, _, _, expected in COLUMNS:
        got = first[name]
        if isinstance(expected, bytes):
            got = bytes(got)
        if name == "b1":
            assert got is True
        assert got == expected, name
        assert nulls[name] is None, name


@pytest.mark.parametrize(
    ("typ", "literal", "needle"),
    [
        ("date", "'0000-00-00'", "zero or partial date"),
        ("datetime", "'2026-00-00 00:00:00'", "zero or partial date"),
        ("time", "'-838:59:59'", "not a time of day"),
        ("time", "'25:00:00'", "not a time of day"),
    ],
)
def test_a_value_without_a_faithful_form_fails_naming_the_column(
    maria: LocalMariaDB, tmp_path: Path, typ: str, literal: str, needle: str
) -> None:
    maria.sql_admin(
        "DROP TABLE IF EXISTS src_bad; "
        f"CREATE TABLE src_bad (id int PRIMARY KEY, odd {typ}); "
        f"SET SESSION sql_mode = ''; INSERT INTO src_bad VALUES (1, {literal});"
    )
    with pytest.raises(SourceError) as info:
        export(maria, spec_for("src_bad"), tmp_path)
    assert "column 'odd'" in str(info.value) and needle in str(info.value)
    assert not info.value.retryable


def test_a_type_without_an_arrow_form_fails_at_plan_time_naming_the_column(
    maria: LocalMariaDB,
) -> None:
    maria.sql_admin(
        "DROP TABLE IF EXISTS src_geo; CREATE TABLE src_geo (id int PRIMARY KEY, place point);"
    )
    source = _source(maria)
    try:
        with pytest.raises(SourceError, match=r"column 'place': MySQL type geometry") as info:
            source.introspect(spec_for("src_geo"))
        assert not info.value.retryable
        # leaving it out is the remedy the message names
        assert [f.name for f in source.introspect(spec_for("src_geo", columns=("id",))).schema]
    finally:
        source.close()


# ---- the session and the snapshot ---------------------------------------------------------


@pytest.fixture(scope="module")
def numbers(maria: LocalMariaDB) -> Iterator[str]:
    maria.sql_admin(
        "DROP TABLE IF EXISTS src_numbers; "
        "CREATE TABLE src_numbers (id bigint PRIMARY KEY, v varchar(20)); "
        "INSERT INTO src_numbers SELECT seq, CONCAT('v', seq) FROM seq_1_to_20000;"
    )
    yield "src_numbers"
    maria.sql_admin("DROP TABLE src_numbers")


def test_every_session_is_utc_read_only_and_in_one_consistent_snapshot(
    maria: LocalMariaDB,
) -> None:
    query = (
        "SELECT @@session.time_zone AS tz, @@session.tx_read_only AS ro, "
        "@@in_transaction AS tx, @@session.max_statement_time AS mst, "
        "@@session.innodb_lock_wait_timeout AS lw, @@session.tx_isolation AS iso"
    )
    spec = spec_for(query=query, statement_timeout_s=90, lock_timeout_s=7)
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = source.schema_of(spec)
        count, batches = source.count_and_read(spec, None, schema)
        (row,) = [r for b in batches for r in b.to_pylist()]
    finally:
        source.close()
    assert count == 1
    # the test server's default is READ COMMITTED: the session sets its own level
    assert row == {
        "tz": "+00:00",
        "ro": 1,
        "tx": 1,
        "mst": 90.0,
        "lw": 7,
        "iso": "REPEATABLE-READ",
    }


def test_ranges_read_exactly_what_count_counts_in_batches_of_batch_size(
    maria: LocalMariaDB, numbers: str
) -> None:
    spec = spec_for(numbers, mode="chunked", chunk_column="id", batch_size=3000)
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = source.schema_of(spec)
        for rng in (
            ChunkRange(0, "1", "5001"),
            ChunkRange(1, "5001", ""),
            ChunkRange(2, "30000", "40000"),
        ):
            count, batches = source.count_and_read(spec, rng, schema)
            got = [b for b in batches]
            ids = [i for b in got for i in b.column("id").to_pylist()]
            assert count == len(ids) == source.count(spec, rng)
            assert all(b.num_rows <= 3000 for b in got)
            assert len(set(ids)) == len(ids)
        assert count == 0 and len(got) == 1  # the last, empty range: one empty batch
    finally:
        source.close()


def test_the_count_and_rows_ignore_rows_committed_during_the_read(
    maria: LocalMariaDB, numbers: str
) -> None:
    spec = spec_for(numbers, mode="chunked", chunk_column="id", batch_size=1000)
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = source.schema_of(spec)
        count, batches = source.count_and_read(spec, ChunkRange(0, "", ""), schema)
        first = next(batches)
        maria.sql_admin(f"INSERT INTO {numbers} VALUES (900000, 'late'), (900001, 'later')")
        rows = first.num_rows + sum(b.num_rows for b in batches)
        assert count == rows == 20000
    finally:
        maria.sql_admin(f"DELETE FROM {numbers} WHERE id >= 900000")
        source.close()


# ---- errors -------------------------------------------------------------------------------


def _failure(source: MySqlSource, spec: ExportSpec, rng: ChunkRange | None = None) -> SourceError:
    with pytest.raises(SourceError) as info:
        schema = source.schema_of(spec) if spec.table else ()
        _, batches = source.count_and_read(spec, rng, schema)
        for _ in batches:
            pass
    return info.value


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("SELEC 1", 1064),
        ("SELECT * FROM no_such_table", 1146),
        ("SELECT no_such_column FROM src_numbers", 1054),
    ],
)
def test_bad_sql_is_permanent_and_names_the_error(
    maria: LocalMariaDB, numbers: str, query: str, code: int
) -> None:
    source = _source(maria)
    try:
        with pytest.raises(SourceError) as info:
            source.schema_of(spec_for(query=query))
        assert not info.value.retryable and info.value.code == code
        assert f"[{code}]" in str(info.value)
        # the reader meets the same error on its own session
        error = _failure(source, spec_for(query=query))
        assert not error.retryable and error.code == code
    finally:
        source.close()


def test_a_wrong_password_is_permanent_and_never_shows(maria: LocalMariaDB) -> None:
    url = maria.url.replace(PASSWORD, "not-the-password")
    source = open_source(spec_for("t"), env={"MY_URL": url})
    with pytest.raises(SourceError) as info:
        source.schema_of(spec_for("src_numbers"))
    assert not info.value.retryable and info.value.code == 1045
    assert "not-the-password" not in str(info.value) and PASSWORD not in str(info.value)


def test_an_unreachable_server_is_retryable_and_the_password_never_shows() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"mysql://sluice:{PASSWORD}@127.0.0.1:{port}/source"
        source = open_source(spec_for("t", connect_timeout_s=2), env={"MY_URL": url})
        with pytest.raises(SourceError) as info:
            source.schema_of(spec_for("src_numbers"))
        assert info.value.retryable
        assert PASSWORD not in str(info.value)
        # the reader's own connection fails the same way
        with pytest.raises(SourceError) as info:
            list(
                source.read(
                    spec_for(query="SELECT 1 AS one"),
                    None,
                    (SchemaField("one", "int64", False, "bigint"),),
                )
            )
        assert info.value.retryable and PASSWORD not in str(info.value)


def test_a_table_lock_held_by_another_session_times_out_retryably(
    maria: LocalMariaDB, numbers: str
) -> None:
    locker = pymysql.connect(
        unix_socket=str(maria.socket), user="root", database=maria.database, autocommit=True
    )
    try:
        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLES {numbers} WRITE")
        source = _source(maria, lock_timeout_s=1)
        spec = spec_for(numbers, lock_timeout_s=1)
        began = time.monotonic()
        error = _failure(source, spec)
        assert error.retryable and error.code == 1205, error
        assert time.monotonic() - began < 20
        source.close()
    finally:
        with contextlib.suppress(Exception):
            locker.close()


def test_a_statement_timeout_is_permanent(maria: LocalMariaDB) -> None:
    source = _source(maria, statement_timeout_s=1)
    try:
        error = _failure(source, spec_for(query="SELECT SLEEP(5) AS s", statement_timeout_s=1))
    finally:
        source.close()
    assert not error.retryable and error.code == 1969, error


def test_a_session_killed_mid_stream_is_retryable(maria: LocalMariaDB) -> None:
    # rows that come slowly (2 ms each), so that the statement is still running when killed
    query = "SELECT seq AS id, SLEEP(0.002) AS s FROM seq_1_to_5000"
    spec = spec_for(query=query, batch_size=100)
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = source.schema_of(spec)
        _, batches = source.count_and_read(spec, None, schema)
        next(batches)
        ids = maria.sql_admin(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE USER = 'sluice' AND INFO LIKE '%seq_1_to_5000%'"
        ).split()
        assert ids, "the reading session is in the process list"
        for pid in ids:
            maria.sql_admin(f"KILL {pid}")
        with pytest.raises(SourceError) as info:
            for _ in batches:
                pass
        assert info.value.retryable, info.value
    finally:
        source.close()


def test_config_refuses_consistent_snapshot_for_mysql() -> None:
    spec = spec_for("t", consistent_snapshot=True, destination="out")
    with pytest.raises(ConfigError, match=r"consistent_snapshot.*PostgreSQL only"):
        check_spec(spec)


def test_a_mysql_source_needs_its_url_variable() -> None:
    with pytest.raises(ConfigError, match="url_env"):
        check_spec(
            ExportSpec(name="x", source=SourceSpec(engine="mysql"), table="t", destination="out")
        )


def test_the_metadata_session_is_configured_even_when_a_read_comes_first(
    maria: LocalMariaDB, numbers: str
) -> None:
    """A worker's first call reads a range; the counting session it opens on the way must
    carry the same settings (UTC, READ ONLY, the timeouts)."""
    spec = spec_for(numbers, mode="chunked", chunk_column="id", lock_timeout_s=3)
    source = open_source(spec, env={"MY_URL": maria.url})
    try:
        schema = (
            SchemaField("id", "int64", False, "bigint"),
            SchemaField("v", "string", True, "varchar"),
        )
        _, batches = source.count_and_read(spec, ChunkRange(0, "1", "10"), schema)
        list(batches)
        with source._cursor() as cur:
            cur.execute(
                "SELECT @@session.tx_read_only, @@session.innodb_lock_wait_timeout, "
                "@@session.time_zone"
            )
            assert cur.fetchone() == (1, 3, "+00:00")
    finally:
        source.close()
