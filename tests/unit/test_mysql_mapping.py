"""The MySQL source's pure parts: the error table, the type mapping from result metadata, the
SQL it writes (back-quoted names, typed literals, text bounds) and its URL parsing."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.common.domain.events import ChunkRange, ExportSpec, RowFilter, SourceSpec
from sluiceway.common.sources import SourceError
from sluiceway.common.sources import mysqlerrors as me
from sluiceway.common.sources import mysqltypes as mt
from sluiceway.common.sources.mysql import classify, iso_key, parse_url
from sluiceway.common.sources.sql import (
    bounds_sql,
    mysql_literal,
    parse_key,
    qmark,
    quote_ident,
    select_sql,
)


@pytest.mark.parametrize(
    ("code", "retryable", "condition"),
    [
        (1213, True, "deadlock"),
        (1205, True, "lock_wait_timeout"),
        (2006, True, "server_gone_away"),
        (2013, True, "connection_lost"),
        (1040, True, "too_many_connections"),
        (1927, True, "connection_killed"),
        (1064, False, "syntax_error"),
        (1146, False, "undefined_table"),
        (1045, False, "access_denied"),
        (1969, False, "statement_timeout"),
        (9999, False, "unknown"),
    ],
)
def test_error_numbers_are_classified(code: int, retryable: bool, condition: str) -> None:
    verdict = me.classify(code, "whatever")
    assert (verdict.retryable, verdict.condition, verdict.code) == (retryable, condition, code)


def test_the_number_is_read_from_either_driver() -> None:
    import pymysql

    assert me.code_of(pymysql.err.OperationalError(1213, "Deadlock found")) == 1213
    text = "MySqlError { ERROR 1146 (42S02): Table 'source.x' doesn't exist }"
    assert me.code_of(RuntimeError(text)) == 1146
    error = classify(RuntimeError(text))
    assert not error.retryable and error.code == 1146
    assert (
        str(error)
        == "mysql undefined_table [1146]: ERROR 1146 (42S02): Table 'source.x' doesn't exist"
    )


@pytest.mark.parametrize(
    "text",
    [
        "DriverError { Could not connect to `127.0.0.1:1': Connection refused (os error 111) }",
        "Source(MySQLError(CodecError { IO error: `bytes remaining on stream' }))",
        "IoError { broken pipe }",
    ],
)
def test_a_connection_failure_without_a_number_is_retryable(text: str) -> None:
    assert classify(RuntimeError(text)).retryable


@pytest.mark.parametrize(
    ("code", "text", "tls"),
    [
        (2003, "Can't connect ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed)", True),
        (2003, "IP address mismatch, certificate is not valid for '127.0.0.1'", True),
        (0, "TlsError { error:0A000086:SSL routines:certificate verify failed }", True),
        # an ordinary server error that happens to say "doesn't match" is no TLS failure
        (1136, "Column count doesn't match value count at row 1", False),
    ],
)
def test_a_certificate_that_does_not_verify_is_permanent_and_only_that(
    code: int, text: str, tls: bool
) -> None:
    verdict = me.classify(code, text)
    assert (verdict.condition == me.TLS_UNVERIFIED) is tls
    assert not verdict.retryable


def test_a_password_in_a_driver_message_is_redacted() -> None:
    error = classify(RuntimeError("Could not connect mysql://u:hunter2@h:3306/db: refused"))
    assert "hunter2" not in str(error)


def _field(type_code: int, *, flags: int = 0, length: int = 0, scale: int = 0, charset: int = 45):
    return mt.field_of(
        "c", type_code, flags=flags, length=length, scale=scale, charset=charset, nullable=True
    )


@pytest.mark.parametrize(
    ("kw", "arrow", "source"),
    [
        ({"type_code": mt.TINY, "length": 4}, "int8", "tinyint"),
        (
            {"type_code": mt.LONGLONG, "flags": mt.UNSIGNED_FLAG, "length": 20},
            "uint64",
            "bigint unsigned",
        ),
        ({"type_code": mt.INT24, "length": 9}, "int32", "mediumint"),
        (
            {"type_code": mt.NEWDECIMAL, "length": 12, "scale": 2},
            "decimal128(10, 2)",
            "decimal(10,2)",
        ),
        (
            {"type_code": mt.NEWDECIMAL, "length": 40, "scale": 10},
            "decimal128(38, 10)",
            "decimal(38,10)",
        ),
        ({"type_code": mt.NEWDECIMAL, "length": 41, "scale": 10}, "string", "decimal(39,10)"),
        (
            {"type_code": mt.NEWDECIMAL, "length": 10, "flags": mt.UNSIGNED_FLAG},
            "decimal128(10, 0)",
            "decimal(10,0) unsigned",
        ),
        ({"type_code": mt.DATETIME, "scale": 6}, "timestamp[us]", "datetime(6)"),
        ({"type_code": mt.TIMESTAMP}, "timestamp[us, tz=UTC]", "timestamp"),
        ({"type_code": mt.DATE}, "date32[day]", "date"),
        ({"type_code": mt.TIME, "scale": 3}, "time64[us]", "time(3)"),
        ({"type_code": mt.YEAR}, "int16", "year"),
        ({"type_code": mt.BIT, "length": 1}, "bool", "bit(1)"),
        ({"type_code": mt.BIT, "length": 17}, "uint64", "bit(17)"),
        ({"type_code": mt.VAR_STRING}, "string", "varchar"),
        ({"type_code": mt.VAR_STRING, "charset": mt.BINARY_CHARSET}, "binary", "varbinary"),
        ({"type_code": mt.BLOB, "charset": mt.BINARY_CHARSET}, "binary", "blob"),
        ({"type_code": mt.BLOB}, "string", "text"),
        ({"type_code": mt.STRING, "flags": mt.ENUM_FLAG}, "string", "enum"),
        ({"type_code": mt.STRING, "flags": mt.SET_FLAG}, "string", "set"),
        ({"type_code": mt.JSON}, "string", "json"),
    ],
)
def test_result_metadata_maps_to_the_documented_arrow_type(
    kw: dict, arrow: str, source: str
) -> None:
    field = _field(**kw)
    assert (field.type, field.source_type) == (arrow, source)


def test_a_geometry_has_no_arrow_form() -> None:
    with pytest.raises(SourceError, match="column 'c': MySQL type geometry"):
        _field(mt.GEOMETRY)


def test_decimals_dates_and_times_are_selected_as_text() -> None:
    for code in (mt.NEWDECIMAL, mt.DATE, mt.DATETIME, mt.TIMESTAMP, mt.TIME):
        assert mt.select_expr(_field(code, length=12)) == "CAST(`c` AS CHAR) AS `c`"
    bit = _field(mt.BIT, length=8)
    assert mt.select_expr(bit) == "CAST(`c` AS UNSIGNED) AS `c`"
    assert mt.select_expr(_field(mt.LONG, length=11)) == "`c`"


def test_conform_casts_text_and_refuses_what_it_cannot_keep() -> None:
    target = pa.schema(
        [
            ("d", pa.decimal128(5, 2)),
            ("t", pa.timestamp("us", tz="UTC")),
            ("tm", pa.time64("us")),
            ("b", pa.bool_()),
            ("bin", pa.binary()),
        ]
    )
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["1.25", None]),
            pa.array(["2026-01-02 03:04:05.5", None]),
            pa.array(["23:59:59.999999", None]),
            pa.array([1, 0], pa.uint64()),
            pa.array([b"\x00", None], pa.large_binary()),
            pa.array([7, 7], pa.int64()),  # the count column, left behind
        ],
        names=["d", "t", "tm", "b", "bin", "sluiceway_rows"],
    )
    out = mt.conform(batch, target)
    assert out.schema == target
    assert out.to_pylist()[0] == {
        "d": Decimal("1.25"),
        "t": datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
        "tm": time(23, 59, 59, 999999),
        "b": True,
        "bin": b"\x00",
    }
    rounding = pa.RecordBatch.from_arrays([pa.array(["1.255"])], names=["d"])
    with pytest.raises(SourceError, match="column 'd'"):
        mt.conform(rounding, pa.schema([("d", pa.decimal128(5, 2))]))


def _spec(**kw: object) -> ExportSpec:
    return ExportSpec(name="e", source=SourceSpec(engine="mysql", url_env="U"), **kw)  # type: ignore[arg-type]


def test_mysql_sql_back_quotes_names_and_writes_typed_literals() -> None:
    assert quote_ident("db.t", "mysql") == "`db`.`t`"
    with pytest.raises(SourceError, match="invalid identifier"):
        quote_ident("t`; DROP TABLE x", "mysql")
    spec = _spec(table="shop.orders", chunk_column="created", chunk_by_days=1)
    sql, params = select_sql(
        spec, ChunkRange(0, "2026-01-01T00:00:00+02:00", "2026-01-02"), qmark, ["id"]
    )
    assert sql == (
        "SELECT `id` FROM `shop`.`orders` WHERE `created` >= "
        "TIMESTAMP'2025-12-31 22:00:00.000000' AND `created` < DATE'2026-01-02'"
    )
    assert params == []
    rf = RowFilter(
        column="updated", key_type="timestamp[us]", low="2026-01-01T05:00:00", low_inclusive=False
    )
    filtered = select_sql(_spec(table="t", row_filter=rf), None, qmark)[0]
    assert "`updated` > TIMESTAMP'2026-01-01 05:00:00.000000'" in filtered
    assert bounds_sql(_spec(table="t", chunk_column="id")).startswith(
        "SELECT CAST(MIN(`id`) AS CHAR), CAST(MAX(`id`) AS CHAR)"
    )


@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30))]),
)
def test_a_timestamp_literal_is_the_same_instant_in_utc(
    moment: datetime, tz: timezone | None
) -> None:
    key = moment.replace(tzinfo=tz)
    literal = mysql_literal(key)
    assert literal.startswith("TIMESTAMP'") and literal.endswith("'")
    back = datetime.fromisoformat(literal[len("TIMESTAMP'") : -1])
    expected = key if tz is None else key.astimezone(UTC).replace(tzinfo=None)
    assert back == expected
    assert mysql_literal(date(2026, 1, 2)) == "DATE'2026-01-02'"


def test_key_bounds_are_read_back_with_the_offset_of_their_type() -> None:
    assert (
        iso_key("2026-01-02 03:04:05.5", "timestamp[us, tz=UTC]") == "2026-01-02T03:04:05.5+00:00"
    )
    assert iso_key("2026-01-02 03:04:05", "timestamp[us]") == "2026-01-02T03:04:05"
    assert iso_key("2026-01-02", "date32[day]") == "2026-01-02"
    assert iso_key("42", "int64") == "42"
    aware = parse_key(iso_key("2026-01-02 03:04:05", "timestamp[us, tz=UTC]"), temporal=True)
    assert isinstance(aware, datetime) and aware.tzinfo is not None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h/db",
        "mysql://u:p@/db",
        "mysql://u:p@h:3306/",
        "mysql://u:p@h:notaport/db",
    ],
)
def test_a_bad_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_url(url)
    assert ":p@" not in str(info.value)


def test_a_url_gives_the_driver_its_parts() -> None:
    assert parse_url("mariadb://us%40er:p%2Fw@db.example:3307/shop") == {
        "host": "db.example",
        "port": 3307,
        "user": "us@er",
        "password": "p/w",
        "database": "shop",
    }


@pytest.mark.parametrize(
    ("code", "field", "words"),
    [
        (1146, "table", "no table orders in the database of $SHOP_MY_URL"),
        (1045, "source.url_env", "refused the login of $SHOP_MY_URL's user"),
        (1054, "columns", "a column of the export is not in orders"),
        (2003, "source.url_env", "cannot reach the database server named in $SHOP_MY_URL"),
    ],
)
def test_doctor_names_the_field_and_the_remedy_of_a_mysql_error(
    code: int, field: str, words: str
) -> None:
    from sluiceway.cli.doctor import source_problem

    spec = ExportSpec(
        name="orders", source=SourceSpec(engine="mysql", url_env="SHOP_MY_URL"), table="orders"
    )
    where, text = source_problem(spec, SourceError("mysql ...", retryable=False, code=code))
    assert where == field and words in text


def test_a_reader_panic_is_permanent_and_never_quotes_the_value() -> None:
    class PanicException(BaseException):  # pyo3_runtime's, which is not importable by name
        pass

    error = classify(PanicException('Couldn\'t convert the value `Bytes("secret-row-value")`'))
    assert not error.retryable and "secret-row-value" not in str(error)


def test_a_reader_panic_over_a_lost_connection_stays_retryable() -> None:
    class PanicException(BaseException):
        pass

    text = "cx writer failed: Source(MySQLError(CodecError { IO error: `bytes remaining` }))"
    assert classify(PanicException(text)).retryable
