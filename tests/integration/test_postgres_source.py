"""The PostgreSQL source against a real cluster: types, ranges, NULLs and error classes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from sluiceway.common.domain.events import ChunkRange, ExportSpec, SourceSpec
from sluiceway.common.sources import SourceError, open_source
from sluiceway.common.sources.postgres import PostgresSource, classify
from tests.support.localpg import PASSWORD, LocalPostgres


@pytest.fixture(scope="module")
def orders(pg: LocalPostgres) -> Iterator[str]:
    pg.psql_admin(
        "DROP TABLE IF EXISTS src_orders; "
        "CREATE TABLE src_orders (id bigint, qty int NOT NULL, name text, price numeric(12,2), "
        "raw numeric, attrs jsonb, placed timestamptz, day date, paid bool); "
        "INSERT INTO src_orders SELECT g, g % 10, 'n' || g, g / 100.0, g * 1.5, "
        "jsonb_build_object('k', g), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 s', "
        "date '2024-02-03', g % 2 = 0 FROM generate_series(1, 1000) g; "
        "INSERT INTO src_orders (id, qty) VALUES (NULL, 0), (1001, 1);"
    )
    yield "src_orders"
    pg.psql_admin("DROP TABLE src_orders")


def _spec(table: str = "src_orders", **kw: object) -> ExportSpec:
    base: dict[str, object] = dict(
        name="orders",
        source=SourceSpec(engine="postgres", url_env="PG_URL"),
        table=table,
        chunk_column="id",
    )
    base.update(kw)
    return ExportSpec(**base)  # type: ignore[arg-type]


def test_introspection_maps_types_and_finds_key_bounds(pg: LocalPostgres, orders: str) -> None:
    info = PostgresSource(pg.url).introspect(_spec())
    assert [(f.name, f.type, f.nullable) for f in info.schema] == [
        ("id", "int64", True),
        ("qty", "int32", False),
        ("name", "string", True),
        ("price", "decimal128(12, 2)", True),
        ("raw", "string", True),
        ("attrs", "string", True),
        ("placed", "timestamp[us, tz=UTC]", True),
        ("day", "date32[day]", True),
        ("paid", "bool", True),
    ]
    assert (info.key_low, info.key_high, info.key_nullable) == ("1", "1001", True)
    assert info.row_estimate >= 1000


def test_rows_come_back_typed_with_nulls(pg: LocalPostgres, orders: str) -> None:
    src = open_source(_spec(), env={"PG_URL": pg.url})
    info = src.introspect(_spec())
    rows = pa.Table.from_batches(
        list(src.read(_spec(), ChunkRange(start_key="10", end_key="12"), info.schema))
    ).to_pylist()
    assert [r["id"] for r in rows] == [10, 11]
    assert rows[0]["price"] == Decimal("0.10") and rows[0]["raw"] == "15.0"
    assert rows[0]["attrs"] == '{"k": 10}'
    assert rows[0]["placed"] == datetime(2024, 1, 1, 0, 0, 10, tzinfo=UTC)
    (tail,) = pa.Table.from_batches(
        list(src.read(_spec(), ChunkRange(start_key="1001"), info.schema))
    ).to_pylist()
    assert tail["name"] is None and tail["price"] is None and tail["placed"] is None


@pytest.mark.parametrize(
    ("rng", "expected"),
    [
        (None, 1002),
        (ChunkRange(start_key="1", end_key="501"), 500),
        (ChunkRange(start_key="501", end_key="1001", end_inclusive=True), 501),
        (ChunkRange(end_key="11"), 10),
        (ChunkRange(null_keys=True), 1),
        (ChunkRange(start_key="5000"), 0),
    ],
)
def test_ranges_read_exactly_what_count_counts(
    pg: LocalPostgres, orders: str, rng: ChunkRange | None, expected: int
) -> None:
    src = PostgresSource(pg.url, batch_size_hint_bytes=4096)
    rows = sum(b.num_rows for b in src.read(_spec(), rng, ()))
    assert rows == expected == src.count(_spec(), rng)
    counted, batches = src.count_and_read(_spec(), rng, ())
    assert counted == expected == sum(b.num_rows for b in batches)
    src.close()


def test_the_snapshot_count_ignores_rows_inserted_during_the_read(
    pg: LocalPostgres, orders: str
) -> None:
    import psycopg

    src = PostgresSource(pg.url, batch_size_hint_bytes=4096)
    try:
        counted, batches = src.count_and_read(_spec(), None, ())
        with psycopg.connect(pg.url, autocommit=True) as other:
            other.execute("INSERT INTO src_orders (id, qty) VALUES (5000, 0)")
            try:
                assert sum(b.num_rows for b in batches) == counted  # one snapshot for both
                assert src.count(_spec(), None) == counted + 1
            finally:
                other.execute("DELETE FROM src_orders WHERE id = 5000")
    finally:
        src.close()


def test_a_query_is_wrapped_as_a_subquery(pg: LocalPostgres, orders: str) -> None:
    spec = _spec(table="", query="SELECT id, price * 2 AS doubled FROM src_orders WHERE qty = 3")
    src = PostgresSource(pg.url)
    info = src.introspect(spec)
    assert [f.name for f in info.schema] == ["id", "doubled"]
    assert src.count(spec, ChunkRange(start_key="1", end_key="101")) == 10


def test_a_missing_table_is_permanent(pg: LocalPostgres) -> None:
    with pytest.raises(SourceError) as err:
        list(PostgresSource(pg.url).read(_spec(table="no_such_table"), None, ()))
    assert not err.value.retryable and "42P01" in str(err.value)


def test_an_unreachable_server_is_retryable_and_the_password_never_shows(
    pg: LocalPostgres, orders: str
) -> None:
    url = pg.url.replace(f":{pg.port}/", ":1/")
    with pytest.raises(SourceError) as err:
        list(PostgresSource(url).read(_spec(), None, ()))
    assert err.value.retryable
    assert PASSWORD not in str(err.value)


class _Err(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"boom {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "retryable"),
    [
        ("40001", True),
        ("40P01", True),
        ("55P03", True),
        ("53300", True),
        ("57P01", True),
        ("08006", True),
        ("42601", False),
        ("42P01", False),
        ("42703", False),
        ("42501", False),
        ("XX000", False),
    ],
)
def test_sqlstates_are_classified(sqlstate: str, retryable: bool) -> None:
    assert classify(_Err(sqlstate)).retryable is retryable
