"""The PostgreSQL -> Arrow type rule and the checks on driver batches, without a server."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from sluiceway.cli.types import parquet_types, render_text, type_rows
from sluiceway.common.domain.events import SchemaField
from sluiceway.common.sources import SourceError, arrow_type
from sluiceway.common.sources import pgtypes as pt

NUMERIC, NUMERIC_ARRAY, INT4_ARRAY = 1700, 1231, 1007


def typmod(precision: int, scale: int) -> int:
    """PostgreSQL's make_numeric_typmod()."""
    return ((precision << 16) | (scale & 0x7FF)) + 4


@pytest.mark.parametrize(
    ("oid", "mod", "elem", "fmt", "expected"),
    [
        (21, -1, 0, "parquet", "int16"),
        (23, -1, 0, "parquet", "int32"),
        (20, -1, 0, "parquet", "int64"),
        (26, -1, 0, "parquet", "int64"),  # oid is unsigned 32-bit
        (700, -1, 0, "parquet", "float"),
        (701, -1, 0, "parquet", "double"),
        (16, -1, 0, "parquet", "bool"),
        (17, -1, 0, "parquet", "binary"),
        (1042, -1, 0, "parquet", "string"),
        (1082, -1, 0, "parquet", "date32[day]"),
        (1083, -1, 0, "parquet", "time64[us]"),
        (1114, -1, 0, "parquet", "timestamp[us]"),
        (1184, -1, 0, "parquet", "timestamp[us, tz=UTC]"),
        (1186, -1, 0, "parquet", "string"),
        (2950, -1, 0, "parquet", "extension<arrow.uuid>"),
        (2950, -1, 0, "csv", "string"),
        (3802, -1, 0, "parquet", "string"),
        (1266, -1, 0, "parquet", "string"),  # timetz: as PostgreSQL prints it
        (NUMERIC, typmod(12, 2), 0, "parquet", "decimal128(12, 2)"),
        (NUMERIC, typmod(38, 0), 0, "parquet", "decimal128(38, 0)"),
        (NUMERIC, typmod(3, -2), 0, "parquet", "decimal128(5, 0)"),
        (NUMERIC, typmod(3, 5), 0, "parquet", "decimal128(5, 5)"),
        (NUMERIC, typmod(38, -1), 0, "parquet", "string"),  # 39 digits
        (NUMERIC, typmod(39, 2), 0, "parquet", "string"),
        (NUMERIC, -1, 0, "parquet", "string"),  # unbounded: never rounded
        (INT4_ARRAY, -1, 23, "parquet", "list<item: int32>"),
        (NUMERIC_ARRAY, typmod(10, 2), NUMERIC, "parquet", "list<item: decimal128(10, 2)>"),
        (NUMERIC_ARRAY, -1, NUMERIC, "parquet", "list<item: string>"),
        (INT4_ARRAY, -1, 23, "csv", "string"),  # CSV: the array literal
        (12345, -1, 0, "parquet", "string"),  # an enum, or anything unknown
    ],
)
def test_each_type_maps_to_its_arrow_type(
    oid: int, mod: int, elem: int, fmt: str, expected: str
) -> None:
    got = pt.arrow_type_of(oid, mod, elem, fmt)
    assert got == expected
    assert str(arrow_type(got)) == got  # the planned string parses back to itself


def test_numeric_typmod_decodes_negative_scales() -> None:
    assert pt.numeric_typmod(typmod(12, 2)) == (12, 2)
    assert pt.numeric_typmod(typmod(3, -2)) == (3, -2)
    assert pt.numeric_typmod(typmod(1000, -1000)) == (1000, -1000)
    assert pt.numeric_typmod(-1) is None


@pytest.mark.parametrize(
    "text",
    ["list<item: int32 not null>", "list<item: list<item: string>>", "large_list<item: binary>"],
)
def test_list_type_strings_round_trip(text: str) -> None:
    assert str(arrow_type(text)) == text


def field(name: str, typ: str, source: str) -> SchemaField:
    return SchemaField(name=name, type=typ, nullable=True, source_type=source)


def test_select_list_casts_only_what_the_driver_cannot_hand_over() -> None:
    assert pt.select_expr(field("a", "int64", "bigint")) == '"a"'
    assert pt.select_expr(field("a", "string", "text")) == '"a"'
    assert pt.select_expr(field("a", "string", "interval")) == '"a"'
    assert pt.select_expr(field("a", "extension<arrow.uuid>", "uuid")) == '"a"'
    assert pt.select_expr(field("a", "decimal128(12, 2)", "numeric")) == '"a"::text AS "a"'
    # json and jsonb come as the driver's arrow.json over their text: no cast on the server
    assert pt.select_expr(field("a", "string", "jsonb")) == '"a"'
    assert pt.select_expr(field("a", "string", "json")) == '"a"'
    assert pt.select_expr(field("a", "list<item: string>", "jsonb[]")).endswith(
        'ELSE "a" END AS "a"'
    )
    assert pt.select_expr(field("a", "string", "uuid")) == '"a"::text AS "a"'  # a CSV plan
    assert pt.select_expr(field("a", "int64", "oid")) == '"a"::int8 AS "a"'


def test_arrays_are_guarded_against_what_a_list_cannot_hold() -> None:
    expr = pt.select_expr(field("a", "list<item: decimal128(10, 2)>", "numeric[]"))
    assert expr.startswith('CASE WHEN array_ndims("a") > 1 OR array_lower("a", 1) <> 1 THEN')
    assert expr.endswith('::int::text::text[] ELSE "a"::text[] END AS "a"')
    native = pt.select_expr(field("a", "list<item: int32>", "integer[]"))
    assert native.endswith('::int::text::integer[] ELSE "a" END AS "a"')


def mdn(*values: tuple[int, int, int] | None) -> pa.Array:
    return pa.array(
        [None if v is None else pa.MonthDayNano(list(v)) for v in values],
        type=pa.month_day_nano_interval(),
    )


def test_intervals_become_exact_text_nulls_kept_and_slices_respected() -> None:
    arr = mdn((14, 3, 14_706_789_000_000), None, (-1, 0, -7_000), (0, 0, 0))
    assert pt.interval_text(arr).to_pylist() == [
        "14 months 3 days 14706789000 microseconds",
        None,
        "-1 months 0 days -7 microseconds",
        "0 months 0 days 0 microseconds",
    ]
    assert pt.interval_text(arr.slice(2, 1)).to_pylist() == ["-1 months 0 days -7 microseconds"]


def test_conform_casts_text_numerics_and_lists_of_them() -> None:
    target = pa.schema(
        [("n", pa.decimal128(12, 2)), ("l", pa.list_(pa.decimal128(10, 2))), ("i", pa.string())]
    )
    batch = pa.record_batch(
        [
            pa.array(["1.50", None]),
            pa.array([["1.50", None], None]),
            mdn((1, 2, 3_000), None),
        ],
        names=["n", "l", "i"],
    )
    out = pt.conform(batch, target)
    assert out.schema == target
    assert out.column(1).to_pylist()[0][1] is None and out.column(1).null_count == 1
    assert out.column(2).to_pylist() == ["1 months 2 days 3 microseconds", None]


def test_a_numeric_nan_fails_rather_than_changes() -> None:
    batch = pa.record_batch([pa.array(["NaN"])], names=["price"])
    with pytest.raises(SourceError, match=r"'price'.*NaN") as info:
        pt.conform(batch, pa.schema([("price", pa.decimal128(12, 2))]))
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("typ", "value"),
    [
        # what ADBC hands over for 'infinity' and '-infinity' (int64 wrapped around)
        (pa.timestamp("us"), -9_222_425_352_054_775_809),
        (pa.timestamp("us", tz="UTC"), -9_222_425_352_054_775_808),
        (pa.date32(), -2_147_472_692),
    ],
)
def test_infinite_timestamps_and_dates_fail_by_name(typ: pa.DataType, value: int) -> None:
    storage = pa.int64() if pa.types.is_timestamp(typ) else pa.int32()
    col = pa.array([0, value, None], type=storage).view(typ)
    with pytest.raises(SourceError, match=r"column 'at'.*infinity"):
        pt.conform(pa.record_batch([col], names=["at"]), pa.schema([("at", typ)]))
    nested = pa.ListArray.from_arrays(pa.array([0, 3], pa.int32()), col)
    with pytest.raises(SourceError, match="column 'at'"):
        pt.conform(pa.record_batch([nested], names=["at"]), pa.schema([("at", pa.list_(typ))]))


def test_postgres_first_instant_is_kept() -> None:
    col = pa.array([pt.PG_MIN_TIMESTAMP_US], type=pa.int64()).view(pa.timestamp("us"))
    target = pa.schema([("at", pa.timestamp("us"))])
    assert pt.conform(pa.record_batch([col], names=["at"]), target).column(0).equals(col)


def test_uuid_extension_passes_through() -> None:
    u = uuid.uuid4()
    col = pa.array([u.bytes, None], type=pa.uuid())
    out = pt.conform(pa.record_batch([col], names=["u"]), pa.schema([("u", pa.uuid())]))
    assert out.column(0).to_pylist() == [u, None]


def test_parquet_types_come_from_the_writer() -> None:
    schema = pa.schema(
        [
            ("a", pa.int16()),
            ("n", pa.decimal128(12, 2)),
            ("t", pa.timestamp("us", tz="UTC")),
            ("u", pa.uuid()),
            ("l", pa.list_(pa.string())),
            ("b", pa.binary()),
        ]
    )
    assert parquet_types(schema) == {
        "a": "INT(16)",
        "n": "DECIMAL(12, 2)",
        "t": "TIMESTAMP(us, UTC)",
        "u": "UUID",
        "l": "LIST<STRING>",
        "b": "BYTE_ARRAY",
    }


def test_type_rows_render_one_line_per_column() -> None:
    fields = [
        SchemaField("id", "int64", False, "bigint"),
        SchemaField("tags", "list<item: string>", True, "text[]"),
    ]
    text = render_text(type_rows(fields), "postgres")
    lines = text.splitlines()
    assert lines[0].split() == "column PostgreSQL type arrow type parquet type nullable".split()
    assert lines[2].split() == ["id", "bigint", "int64", "INT64", "no"]
    assert lines[3].split() == ["tags", "text[]", "list<item:", "string>", "LIST<STRING>", "yes"]
    csv = type_rows(fields, "csv")
    assert {r.parquet_type for r in csv} == {"(csv text)"}
