"""Every common PostgreSQL type, exported through the real PostgreSQL read path and PartWriter,
read back by DuckDB and compared value by value with PostgreSQL; values that have no faithful
Arrow form fail the export instead of changing."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from sluiceway.cli.main import main
from sluiceway.common.domain.events import ExportSpec, SchemaField, SourceSpec
from sluiceway.common.parts import PartWriter
from sluiceway.common.sources import SourceError, arrow_schema, open_source
from tests.support.localpg import LocalPostgres

EPOCH_US = "(extract(epoch from {c}) * 1000000)::int8"
# the three fields PostgreSQL stores, derived independently of the exporter
INTERVAL_FIELDS = (
    "(extract(year from {c}) * 12 + extract(month from {c}))::int8 || ' months ' || "
    "extract(day from {c})::int8 || ' days ' || (extract(hour from {c}) * 3600000000 + "
    "extract(minute from {c}) * 60000000 + extract(microseconds from {c}))::int8 || "
    "' microseconds'"
)

# name, PostgreSQL type, expression compared on the PostgreSQL side, on the DuckDB side
COLUMNS: list[tuple[str, str, str, str]] = [
    ("i2", "smallint", "{c}", "{c}"),
    ("i4", "integer", "{c}", "{c}"),
    ("i8", "bigint", "{c}", "{c}"),
    ("o", "oid", "{c}::int8", "{c}"),
    ("n38", "numeric(38, 0)", "{c}", "{c}"),
    ("n38s", "numeric(38, 10)", "{c}", "{c}"),
    ("n12", "numeric(12, 2)", "{c}", "{c}"),
    ("nneg", "numeric(3, -2)", "{c}", "{c}"),
    ("nsmall", "numeric(3, 5)", "{c}", "{c}"),
    ("nu", "numeric", "{c}::text", "{c}"),
    ("f4", "real", "{c}::float8", "{c}"),
    ("f8", "double precision", "{c}", "{c}"),
    ("t", "text", "{c}", "{c}"),
    ("vc", "varchar(10)", "{c}", "{c}"),
    ("ch", "char(4)", "{c}", "{c}"),
    ("b", "boolean", "{c}", "{c}"),
    ("d", "date", "{c} - date '1970-01-01'", "{c} - DATE '1970-01-01'"),
    ("tm", "time", "{c}::text", "{c}::VARCHAR"),
    ("ts", "timestamp", EPOCH_US, "epoch_us({c})"),
    ("tstz", "timestamptz", EPOCH_US, "epoch_us({c})"),
    ("iv", "interval", INTERVAL_FIELDS, "{c}"),
    ("u", "uuid", "{c}", "{c}"),
    ("j", "json", "{c}::text", "{c}"),
    ("jb", "jsonb", "{c}::text", "{c}"),
    ("by", "bytea", "{c}", "{c}"),
    ("ai", "integer[]", "{c}", "{c}"),
    ("at", "text[]", "{c}", "{c}"),
    ("an", "numeric(10, 2)[]", "{c}", "{c}"),
    ("anu", "numeric[]", "{c}::text[]", "{c}"),
    ("ad", "date[]", "{c}", "{c}"),
    ("au", "uuid[]", "{c}", "{c}"),
    ("e", "mood", "{c}::text", "{c}"),
    ("ae", "mood[]", "{c}::text[]", "{c}"),
    ("tz", "timetz", "{c}::text", "{c}"),
]

ROWS = [
    # the largest values
    "1, 32767, 2147483647, 9223372036854775807, 4294967295, "
    "99999999999999999999999999999999999999, 9999999999999999999999999999.9999999999, "
    "9999999999.99, 99900, 0.00999, "
    "'-123456789012345678901234567890.123456789012345678901234567890', 'NaN', 'Infinity', "
    "E'h\\u00e9llo \\u2603 \"q\"\\n,x', '', 'ab', true, '5874897-12-31', '24:00:00', "
    "'294246-12-31 23:59:59.999999', '2024-02-29 12:34:56.789012+05:30', "
    "'1 year -2 mons +3 days -04:05:06.000007', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    '\'{"a": [1, 2.50], "b": "x"}\', \'{"a": [1, 2.50], "b": "x"}\', \'\\x00ff00\', '
    "'{1,NULL,-3}', '{a,NULL,\"x, y\",\"NULL\"}', '{1.50,NULL,-2.25}', "
    "'{-1e-30,NaN,123456789012345678901234567890123456789012}', '{2024-01-01,NULL}', "
    "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', 'happy', '{sad,NULL}', '12:00:00+05:30'",
    # the smallest values
    "2, -32768, -2147483648, -9223372036854775808, 0, "
    "-99999999999999999999999999999999999999, -0.0000000001, -0.01, -12300, -0.00001, "
    "'NaN', '-Infinity', '-0', '', 'v', '', false, '4714-11-24 BC', '00:00:00', "
    "'4714-11-24 00:00:00 BC', '4714-11-24 00:00:00+00 BC', '-1 day -00:00:00.000001', "
    "'00000000-0000-0000-0000-000000000000', 'null', '[]', '', '{}', '{NULL}', '{}', "
    "'{Infinity,-Infinity}', '{}', '{}', 'sad', '{}', '00:00:00+00'",
    # ordinary values
    "3, 0, 42, -7, 12345, 1, 3.1415926535, 1234.50, -100, 0.001, '0', 1.1, 0.1, 'x', 'y', "
    "'abcd', true, '2024-02-29', '12:34:56.123456', '2000-01-01 00:00:00', "
    "'1970-01-01 00:00:00+00', '0', '7f1b7e42-3a1c-4b6e-9d8f-0123456789ab', '{}', '{}', "
    "'\\x', '{0}', '{\"\"}', '{0.00}', '{0}', '{1970-01-01}', "
    "'{7f1b7e42-3a1c-4b6e-9d8f-0123456789ab}', 'ok', '{ok,happy}', '23:59:59.999999-15:59'",
]


@pytest.fixture(scope="module")
def types_table(pg: LocalPostgres) -> Iterator[str]:
    cols = ", ".join(f"{name} {typ}" for name, typ, _, _ in COLUMNS)
    values = ", ".join(f"({row})" for row in ROWS)
    pg.psql_admin(
        "DROP TABLE IF EXISTS src_types; DROP TYPE IF EXISTS mood; "
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); "
        f"CREATE TABLE src_types (id int PRIMARY KEY, {cols}); "
        f"INSERT INTO src_types VALUES {values}; "
        "INSERT INTO src_types (id) VALUES (4);"  # NULL in every column
    )
    yield "src_types"
    pg.psql_admin("DROP TABLE src_types; DROP TYPE mood")


def spec_for(table: str, fmt: str = "parquet", columns: tuple[str, ...] = ()) -> ExportSpec:
    return ExportSpec(
        name="types",
        source=SourceSpec(engine="postgres", url_env="PG_URL"),
        table=table,
        format=fmt,
        columns=columns,
    )


def export(
    pg: LocalPostgres, spec: ExportSpec, run_dir: Path
) -> tuple[tuple[SchemaField, ...], list[Path]]:
    """Introspect (as the planner does), then read and write the one chunk (as a worker does)."""
    source = open_source(spec, env={"PG_URL": pg.url})
    try:
        schema = source.introspect(spec).schema
        writer = PartWriter(run_dir, 0, 1, spec.format, "zstd", 0, 0, arrow_schema(schema))
        _, batches = source.count_and_read(spec, None, schema)
        try:
            for batch in batches:
                writer.write(batch)
            parts = writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        source.close()
    return schema, [run_dir / p.file_name for p in parts]


@pytest.fixture(scope="module")
def exported(
    pg: LocalPostgres, types_table: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[SchemaField, ...], list[Path]]:
    return export(pg, spec_for(types_table), tmp_path_factory.mktemp("types"))


def duck(paths: list[Path], sql: str) -> list[tuple[Any, ...]]:
    files = ", ".join(f"'{p}'" for p in paths)
    return duckdb.sql(sql.replace("PARTS", f"read_parquet([{files}])")).fetchall()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)


def test_the_planned_types_are_the_documented_ones(exported: Any) -> None:
    schema, _ = exported
    planned = {f.name: f.type for f in schema}
    assert planned == {
        "id": "int32",
        "i2": "int16",
        "i4": "int32",
        "i8": "int64",
        "o": "int64",
        "n38": "decimal128(38, 0)",
        "n38s": "decimal128(38, 10)",
        "n12": "decimal128(12, 2)",
        "nneg": "decimal128(5, 0)",
        "nsmall": "decimal128(5, 5)",
        "nu": "string",
        "f4": "float",
        "f8": "double",
        "t": "string",
        "vc": "string",
        "ch": "string",
        "b": "bool",
        "d": "date32[day]",
        "tm": "time64[us]",
        "ts": "timestamp[us]",
        "tstz": "timestamp[us, tz=UTC]",
        "iv": "string",
        "u": "extension<arrow.uuid>",
        "j": "string",
        "jb": "string",
        "by": "binary",
        "ai": "list<item: int32>",
        "at": "list<item: string>",
        "an": "list<item: decimal128(10, 2)>",
        "anu": "list<item: string>",
        "ad": "list<item: date32[day]>",
        "au": "list<item: extension<arrow.uuid>>",
        "e": "string",
        "ae": "list<item: string>",
        "tz": "string",
    }
    assert [f.nullable for f in schema] == [False] + [True] * len(COLUMNS)


def test_duckdb_reads_the_types_it_should(exported: Any) -> None:
    _, parts = exported
    described = {name: typ for name, typ, *_ in duck(parts, "DESCRIBE SELECT * FROM PARTS")}
    assert {k: described[k] for k in ("n38", "nneg", "tstz", "u", "an", "au", "by", "tm")} == {
        "n38": "DECIMAL(38,0)",
        "nneg": "DECIMAL(5,0)",
        "tstz": "TIMESTAMP WITH TIME ZONE",
        "u": "UUID",
        "an": "DECIMAL(10,2)[]",
        "au": "UUID[]",
        "by": "BLOB",
        "tm": "TIME",
    }


def test_every_value_reads_back_as_postgresql_holds_it(
    pg: LocalPostgres, types_table: str, exported: Any
) -> None:
    _, parts = exported
    with psycopg.connect(pg.url) as con:
        pg_exprs = ", ".join(e.format(c=name) for name, _, e, _ in COLUMNS)
        expected = con.execute(f"SELECT id, {pg_exprs} FROM {types_table} ORDER BY id").fetchall()
    duck_exprs = ", ".join(e.format(c=f'"{name}"') for name, _, _, e in COLUMNS)
    got = duck(parts, f"SELECT id, {duck_exprs} FROM PARTS ORDER BY id")
    assert len(got) == len(expected) == 4
    mismatches = [
        (row[0], name, want, have)
        for row, other in zip(expected, got, strict=True)
        for (name, *_), want, have in zip(COLUMNS, row[1:], other[1:], strict=True)
        if not same(want, have)
    ]
    assert mismatches == []
    assert all(v is None for v in got[3][1:])  # the NULL row


def test_interval_text_means_the_same_interval_to_postgresql_and_duckdb(
    pg: LocalPostgres, types_table: str, exported: Any
) -> None:
    _, parts = exported
    texts = [r[0] for r in duck(parts, "SELECT iv FROM PARTS WHERE iv IS NOT NULL ORDER BY id")]
    assert texts[0] == "10 months 3 days -14706000007 microseconds"
    with psycopg.connect(pg.url) as con:
        same_in_pg = con.execute(
            "SELECT bool_and(iv::text = (x.t)::interval::text) FROM unnest(%s::text[]) "
            "WITH ORDINALITY AS x(t, n) JOIN src_types ON id = n",
            (texts,),
        ).fetchone()
    assert same_in_pg == (True,)
    (in_duck,) = duck(
        parts,
        "SELECT CAST(iv AS INTERVAL) = to_months(10) + to_days(3) - "
        "to_microseconds(14706000007) FROM PARTS WHERE id = 1",
    )
    assert in_duck == (True,)


def test_a_csv_export_writes_arrays_uuids_and_intervals_as_postgresql_text(
    pg: LocalPostgres, types_table: str, tmp_path: Path
) -> None:
    spec = spec_for(types_table, "csv", ("id", "u", "ai", "at", "iv"))
    schema, parts = export(pg, spec, tmp_path)
    assert [f.type for f in schema] == ["int32", "string", "string", "string", "string"]
    rows = duckdb.sql(
        f"SELECT u, ai, \"at\" FROM read_csv('{parts[0]}', all_varchar = true) WHERE id = '1'"
    ).fetchall()
    assert rows == [
        ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{1,NULL,-3}", '{a,NULL,"x, y","NULL"}')
    ]


@pytest.mark.parametrize(
    ("typ", "value", "message"),
    [
        ("timestamp", "'infinity'", r"column 'v': a timestamp value .*'infinity'"),
        ("timestamptz", "'-infinity'", r"column 'v': a timestamp value"),
        ("timestamp", "'294276-12-31 23:59:59'", r"column 'v': a timestamp value"),
        ("date", "'infinity'", r"column 'v': a date value"),
        ("timestamptz[]", "ARRAY['infinity'::timestamptz]", r"column 'v': a timestamp value"),
        ("numeric(10, 2)", "'NaN'", r"column 'v': cannot convert .*'NaN'"),
        ("numeric(10, 2)[]", "'{1.00,NaN}'", r"column 'v': cannot convert .*'NaN'"),
        ("integer[]", "'{{1,2},{3,4}}'", r"column v holds an array with bounds \[1:2\]\[1:2\]"),
        ("text[]", "'[0:1]={a,b}'", r"column v holds an array with bounds \[0:1\]"),
    ],
)
def test_a_value_without_a_faithful_form_fails_the_export(
    pg: LocalPostgres, tmp_path: Path, typ: str, value: str, message: str
) -> None:
    pg.psql_admin(
        f"DROP TABLE IF EXISTS src_bad; CREATE TABLE src_bad (id int, v {typ}); "
        f"INSERT INTO src_bad VALUES (1, NULL), (2, {value})"
    )
    try:
        with pytest.raises(SourceError, match=message) as info:
            export(pg, spec_for("src_bad"), tmp_path)
    finally:
        pg.psql_admin("DROP TABLE src_bad")
    assert not info.value.retryable
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_types_command_prints_the_mapping(
    pg: LocalPostgres,
    types_table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "exports.yaml"
    config.write_text(
        "sources:\n  shop: {engine: postgres, url_env: TYPES_PG_URL}\n"
        f"defaults:\n  destination: {tmp_path / 'out'}\n"
        f"exports:\n  - name: everything\n    source: shop\n    table: {types_table}\n"
        "    mode: full\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("TYPES_PG_URL", pg.url)
    assert main(["types", "-c", str(config), "--json"]) == 0
    rows = {r["column"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["n12"] == {
        "column": "n12",
        "source_type": "numeric",
        "arrow_type": "decimal128(12, 2)",
        "parquet_type": "DECIMAL(12, 2)",
        "nullable": True,
    }
    assert rows["id"]["nullable"] is False
    assert (rows["u"]["arrow_type"], rows["u"]["parquet_type"]) == ("extension<arrow.uuid>", "UUID")
    assert rows["ai"]["parquet_type"] == "LIST<INT32>"
    assert rows["tstz"]["parquet_type"] == "TIMESTAMP(us, UTC)"

    assert main(["types", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["column", "PostgreSQL", "type"]
    assert lines[2].split() == ["id", "integer", "int32", "INT32", "no"]
    assert len(lines) == 2 + 1 + len(COLUMNS)

    monkeypatch.delenv("TYPES_PG_URL")
    assert main(["types", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "TYPES_PG_URL" in err and pg.url not in err


def test_uuid_values_are_uuid_equal_in_duckdb(exported: Any) -> None:
    _, parts = exported
    (row,) = duck(parts, "SELECT u, au FROM PARTS WHERE id = 1")
    wanted = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row == (wanted, [wanted, None])
