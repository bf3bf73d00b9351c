"""PostgreSQL type -> Arrow type, how each column is selected, and the checks on what comes back.

The mapping (docs/types.md has the table and what Parquet and DuckDB make of it):
- int2/int4/int8 -> int16/int32/int64; oid -> int64 (selected as ::int8: the driver reads oid
  as a signed int32, which turns oids above 2^31 negative); float4/float8 -> float/double (NaN,
  +-Infinity and -0 kept); bool -> bool; bytea -> binary; text/varchar/char(n)/name -> string
  (char(n) keeps its padding, as PostgreSQL prints it).
- numeric(p, s) -> decimal128(P, S) with S = max(s, 0) and P = max(p - s, 0) + S, when P <= 38:
  PostgreSQL 15 allows a negative scale (numeric(3, -2) holds 12300: decimal128(5, 0)) and a
  scale above the precision (numeric(3, 5) holds 0.00123: decimal128(5, 5)). Selected as
  ::text and cast by Arrow, which refuses (the export fails) rather than rounds; 'NaN', which a
  bounded numeric may hold, has no decimal and fails the export by name.
- Unbounded numeric (no typmod) and numeric(p, s) with P > 38 -> string, PostgreSQL's own text:
  every digit kept, 'NaN' and '+-Infinity' included. decimal128(38, s) for an unbounded column
  would have to pick a scale and round whatever does not fit; a string never loses a digit.
- date -> date32[day]; time -> time64[us] ('24:00:00' included); timestamp -> timestamp[us];
  timestamptz -> timestamp[us, tz=UTC] (the session runs in UTC). 'infinity', '-infinity' and
  timestamps after 294246 AD have no Arrow value: the driver wraps them around int64, so every
  batch is checked against PostgreSQL's own lower bound and the export fails on such a value.
- interval -> string "<months> months <days> days <microseconds> microseconds": the three
  fields PostgreSQL stores, exact, and parsed back to the identical interval by both
  PostgreSQL (::interval) and DuckDB (CAST(... AS INTERVAL)). Parquet has no exact interval
  (its INTERVAL is milliseconds, and pyarrow cannot write month_day_nano_interval).
- uuid -> extension<arrow.uuid> (Parquet FIXED_LEN_BYTE_ARRAY(16) with the UUID logical type;
  DuckDB reads UUID); in CSV exports -> string.
- json/jsonb -> string (::text; jsonb in its normalised form); enums -> string (the label);
  time with time zone, money, inet, ranges, composites and every other type -> string, as
  PostgreSQL prints it (::text).
- Arrays of any of these -> list<item: element type> (NULL elements kept), elements read the
  same way as a column of their type (numeric[] as ::text[] then cast, enum[] as ::text[]). A
  list has one dimension and starts at 1: a multi-dimensional array or one with another lower
  bound fails the export (the driver would flatten it). In CSV exports an array is its
  PostgreSQL literal ('{1,NULL,3}') as a string.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sluiceway.common.domain.events import SchemaField
from sluiceway.common.redact import redact

from .base import SourceError
from .sql import quote_ident

NUMERIC_OID = 1700
OID_OID = 26
UUID_OID = 2950
INTERVAL_OID = 1186
MAX_DECIMAL128 = 38

# element/scalar type OID -> Arrow type string; anything else is read as ::text -> string
_BASE: dict[int, str] = {
    16: "bool",
    17: "binary",
    20: "int64",
    21: "int16",
    23: "int32",
    OID_OID: "int64",
    700: "float",
    701: "double",
    25: "string",
    1043: "string",
    1042: "string",
    19: "string",
    1082: "date32[day]",
    1083: "time64[us]",
    1114: "timestamp[us]",
    1184: "timestamp[us, tz=UTC]",
    INTERVAL_OID: "string",
    UUID_OID: "extension<arrow.uuid>",
}

# format_type() names (SchemaField.source_type) of the types the driver reads as Arrow strings
# read as they are: the driver hands json and jsonb over as its arrow.json extension over the
# text (jsonb's binary form is a version byte and the text, which costs the server about a
# fifth less than jsonb::text, measured on the bench table), unwrapped in conform()
NATIVE_TEXT = frozenset({"text", "character varying", "character", "name", "json", "jsonb"})
# types whose binary form the driver decodes to the planned Arrow type (or, for interval, to
# month_day_nano_interval, which interval_text() turns into the planned string)
NATIVE = NATIVE_TEXT | {
    "smallint",
    "integer",
    "bigint",
    "real",
    "double precision",
    "boolean",
    "bytea",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "interval",
    "uuid",
}

# PostgreSQL's first timestamp and date (4713-11-24 BC, Julian day 0), counted from 1970: the
# driver wraps 'infinity', '-infinity' and timestamps past Arrow's range (294247 AD) below them
PG_MIN_TIMESTAMP_US = -210_866_803_200_000_000
PG_MIN_DATE_DAYS = -2_440_588


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric typmod, None for an unbounded numeric. The scale is an
    11-bit signed field (PostgreSQL 15 allows -1000..1000)."""
    if typmod < 4:
        return None
    raw = typmod - 4
    return (raw >> 16) & 0xFFFF, ((raw & 0x7FF) ^ 1024) - 1024


def decimal_for(precision: int, scale: int) -> str | None:
    """The decimal128 type that holds every value of numeric(precision, scale), or None."""
    arrow_scale = max(scale, 0)
    arrow_precision = max(precision - scale, 0) + arrow_scale
    if not 0 < arrow_precision <= MAX_DECIMAL128:
        return None
    return f"decimal128({arrow_precision}, {arrow_scale})"


def scalar_type(oid: int, typmod: int, fmt: str = "parquet") -> str:
    """The Arrow type string of a (non-array) column of type `oid` with modifier `typmod`."""
    if oid == NUMERIC_OID:
        bounds = numeric_typmod(typmod)
        return (decimal_for(*bounds) if bounds else None) or "string"
    if oid == UUID_OID and fmt == "csv":
        return "string"
    return _BASE.get(oid, "string")


def arrow_type_of(oid: int, typmod: int, elem_oid: int = 0, fmt: str = "parquet") -> str:
    """The Arrow type string of a column; `elem_oid` is pg_type.typelem of an array type (0 for
    a scalar). The typmod of an array column is its element's. CSV has no nested values: an
    array is its PostgreSQL literal there."""
    if elem_oid:
        if fmt == "csv":
            return "string"
        return f"list<item: {scalar_type(elem_oid, typmod, fmt)}>"
    return scalar_type(oid, typmod, fmt)


def field_of(
    name: str,
    oid: int,
    typmod: int,
    nullable: bool,
    source_type: str,
    *,
    elem_oid: int = 0,
    fmt: str = "parquet",
) -> SchemaField:
    return SchemaField(
        name=name,
        type=arrow_type_of(oid, typmod, elem_oid, fmt),
        nullable=nullable,
        source_type=source_type,
    )


# ---- reading ------------------------------------------------------------------------------


def _cast_for(source: str, target: str) -> str:
    """The SQL type a value of `source` (format_type name) is cast to so that the driver hands
    over what becomes `target`, or "" to read it as it is."""
    if source == "oid":
        return "int8"
    if target.startswith("decimal"):
        return "text"  # numeric_out + Arrow's cast beat the driver's binary numeric decoding
    if target == "string" and source not in NATIVE_TEXT and source != "interval":
        return "text"
    if source not in NATIVE and target != "string":
        return "text"  # an old plan's type for a type this reader no longer reads natively
    return ""


def select_expr(field: SchemaField) -> str:
    """The select-list entry of one planned column."""
    col = quote_ident(field.name)
    source = field.source_type
    if field.type.startswith("list<") and source.endswith("[]"):
        element = field.type[len("list<item: ") : -1]
        cast = _cast_for(source[:-2], element)
        value = f"{col}::{cast}[]" if cast else col
        array_type = f"{cast}[]" if cast else source
        # a list has one dimension and starts at 1; the driver would flatten anything else, so
        # such a value stops the read (22P02, permanent) with a message that names it
        message = f"sluiceway: column {field.name} holds an array with bounds ".replace("'", "''")
        return (
            f"CASE WHEN array_ndims({col}) > 1 OR array_lower({col}, 1) <> 1 "
            f"THEN ('{message}' || array_dims({col}) || ', which a list cannot hold')"
            f"::int::text::{array_type} ELSE {value} END AS {col}"
        )
    cast = _cast_for(source, field.type)
    return f"{col}::{cast} AS {col}" if cast else col


def select_list(fields: tuple[SchemaField, ...]) -> str:
    return ", ".join(select_expr(f) for f in fields)


def interval_text(arr: pa.Array) -> pa.Array:
    """month_day_nano_interval -> "<months> months <days> days <microseconds> microseconds",
    vectorised over the array's buffer (16 bytes a value: int32 months, int32 days, int64 ns)."""
    n, off = len(arr), arr.offset
    data = arr.buffers()[1]
    if data is None or n == 0:
        return pa.nulls(n, pa.string())
    ints = pa.Array.from_buffers(pa.int32(), 4 * (off + n), [None, data])
    longs = pa.Array.from_buffers(pa.int64(), 2 * (off + n), [None, data])
    quads = pa.FixedSizeListArray.from_arrays(ints, 4).slice(off, n)
    pairs = pa.FixedSizeListArray.from_arrays(longs, 2).slice(off, n)
    months = pc.cast(pc.list_element(quads, 0), pa.string())
    days = pc.cast(pc.list_element(quads, 1), pa.string())
    micros = pc.cast(pc.divide(pc.list_element(pairs, 1), 1000), pa.string())
    text = pc.binary_join_element_wise(
        months, " months ", days, " days ", micros, " microseconds", ""
    )
    return pc.if_else(arr.is_valid(), text, pa.scalar(None, pa.string()))


def _check_range(name: str, arr: pa.Array) -> None:
    if arr.null_count == len(arr):
        return
    if pa.types.is_timestamp(arr.type):
        low, bound, what = pc.min(arr.view(pa.int64())).as_py(), PG_MIN_TIMESTAMP_US, "timestamp"
    else:
        low, bound, what = pc.min(arr.view(pa.int32())).as_py(), PG_MIN_DATE_DAYS, "date"
    if low is not None and low < bound:
        raise SourceError(
            f"column {name!r}: a {what} value has no Arrow/Parquet equivalent "
            f"('infinity', '-infinity', or a {what} after 294246 AD); it cannot be exported "
            "without changing it",
            retryable=False,
        )


def _cast(name: str, col: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_list(target) and pa.types.is_list(col.type):
        values = col.values
        converted = _cast(name, values, target.value_type)
        if converted is values and col.type.equals(target):
            return col
        return pa.ListArray.from_arrays(col.offsets, converted, type=target, mask=col.is_null())
    if isinstance(col.type, pa.BaseExtensionType) and not col.type.equals(target):
        col = col.storage  # the driver's opaque/json extensions over a string
    if pa.types.is_interval(col.type) and pa.types.is_string(target):
        return interval_text(col)
    if pa.types.is_timestamp(col.type) or pa.types.is_date32(col.type):
        _check_range(name, col)
    if col.type.equals(target):
        return col
    try:
        return col.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SourceError(
            redact(
                f"column {name!r}: cannot convert {col.type} to {target} without changing a "
                f"value: {exc}"
            ),
            retryable=False,
        ) from exc


_CHECKED = (pa.types.is_timestamp, pa.types.is_date32, pa.types.is_list)


def conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """A driver batch as the planned schema: casts (NUMERIC text -> decimal128, lists of
    them), interval text, and the range check of every timestamp and date."""
    checked = any(any(test(f.type) for test in _CHECKED) for f in target)
    if not checked and batch.schema.equals(target):
        return batch
    arrays = [
        _cast(field.name, col, field.type) for col, field in zip(batch.columns, target, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=target)


@dataclass(frozen=True)
class TypeInfo:
    """What introspection needs of one pg_type row."""

    name: str  # format_type(oid, NULL)
    elem_oid: int  # pg_type.typelem of an array type, else 0


TYPE_INFO_SQL = (
    "SELECT oid::int, format_type(oid, NULL), "
    "CASE WHEN typcategory = 'A' AND typelem <> 0 AND format_type(oid, NULL) LIKE '%%[]' "
    "THEN typelem::int ELSE 0 END "
    "FROM pg_type WHERE oid = ANY(%s)"
)
