"""MySQL/MariaDB type -> Arrow type, how each column is selected, and the checks on what comes
back.

Types are read off the result metadata of `SELECT ... LIMIT 0` (type code, flags, length,
decimals, character set: the same for a table and a query). The mapping (docs/types.md has the
table and what has no faithful form):
- TINYINT/SMALLINT/MEDIUMINT/INT/BIGINT -> int8/int16/int32/int32/int64, UNSIGNED -> uint8/
  uint16/uint32/uint32/uint64 (BOOLEAN is TINYINT(1): int8, since it may hold any TINYINT);
  YEAR -> int16; FLOAT/DOUBLE -> float/double; BIT(1) -> bool, BIT(2..64) -> uint64.
- DECIMAL(p, s) -> decimal128(p, s) up to p = 38, selected as text and cast by Arrow (which
  refuses rather than rounds); p > 38 (MySQL allows 65) -> string, MySQL's own text: no
  digit lost (as for PostgreSQL's numeric beyond 38 digits).
- DATE -> date32[day]; DATETIME(fsp) -> timestamp[us]; TIMESTAMP(fsp) -> timestamp[us,
  tz=UTC] (the session runs in UTC); TIME(fsp) -> time64[us]. All four are selected as text:
  the zero and partial dates MySQL may store ('0000-00-00', '2026-00-00') and TIMEs outside a
  day ('-838:59:59', '25:00:00') have no faithful Arrow value, so such a value fails the
  export naming the column, where the binary protocol would be mis-read.
- CHAR/VARCHAR/TEXT (utf8mb4 on the wire, whatever the column's character set), ENUM, SET and
  JSON -> string; BINARY/VARBINARY/BLOB -> binary.
- GEOMETRY and every type not named here -> an error at plan time naming the column.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from sluiceway.common.domain.events import SchemaField
from sluiceway.common.redact import redact

from .base import SourceError
from .sql import quote_ident

MAX_DECIMAL128 = 38
BINARY_CHARSET = 63
UNSIGNED_FLAG = 32
ENUM_FLAG = 256
SET_FLAG = 2048

# MySQL protocol type codes (include/mysql_com.h: enum_field_types)
DECIMAL, TINY, SHORT, LONG, FLOAT, DOUBLE, NULL, TIMESTAMP, LONGLONG, INT24 = range(10)
DATE, TIME, DATETIME, YEAR, NEWDATE, VARCHAR, BIT = range(10, 17)
JSON, NEWDECIMAL, ENUM, SET = 245, 246, 247, 248
TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, BLOB, VAR_STRING, STRING, GEOMETRY = range(249, 256)

_INTEGERS = {
    TINY: ("tinyint", "int8", "uint8"),
    SHORT: ("smallint", "int16", "uint16"),
    INT24: ("mediumint", "int32", "uint32"),
    LONG: ("int", "int32", "uint32"),
    LONGLONG: ("bigint", "int64", "uint64"),
}
_STRINGS = {VARCHAR, VAR_STRING, STRING, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, BLOB}
_TEMPORAL = {
    DATE: ("date", "date32[day]"),
    NEWDATE: ("date", "date32[day]"),
    DATETIME: ("datetime", "timestamp[us]"),
    TIMESTAMP: ("timestamp", "timestamp[us, tz=UTC]"),
    TIME: ("time", "time64[us]"),
}


def decimal_precision(length: int, scale: int, unsigned: bool) -> int:
    """A DECIMAL's precision from its result length (digits + point + sign)."""
    return length - (1 if scale > 0 else 0) - (0 if unsigned else 1)


def field_of(
    name: str,
    type_code: int,
    *,
    flags: int,
    length: int,
    scale: int,
    charset: int,
    nullable: bool,
) -> SchemaField:
    """The planned field of one result column; SchemaField.source_type is MySQL's name for
    it (e.g. `decimal(65,30)`, `bigint unsigned`, `datetime(6)`)."""
    unsigned = bool(flags & UNSIGNED_FLAG)
    if type_code in _INTEGERS:
        kind, signed_type, unsigned_type = _INTEGERS[type_code]
        source = f"{kind} unsigned" if unsigned else kind
        return SchemaField(name, unsigned_type if unsigned else signed_type, nullable, source)
    if type_code in (NEWDECIMAL, DECIMAL):
        precision = decimal_precision(length, scale, unsigned)
        source = f"decimal({precision},{scale})" + (" unsigned" if unsigned else "")
        arrow = f"decimal128({precision}, {scale})" if precision <= MAX_DECIMAL128 else "string"
        return SchemaField(name, arrow, nullable, source)
    if type_code in (FLOAT, DOUBLE):
        return SchemaField(
            name, "float" if type_code == FLOAT else "double", nullable, _name(type_code)
        )
    if type_code == YEAR:
        return SchemaField(name, "int16", nullable, "year")
    if type_code == BIT:
        return SchemaField(name, "bool" if length == 1 else "uint64", nullable, f"bit({length})")
    if type_code in _TEMPORAL:
        kind, arrow = _TEMPORAL[type_code]
        return SchemaField(name, arrow, nullable, f"{kind}({scale})" if scale else kind)
    if type_code == JSON:
        return SchemaField(name, "string", nullable, "json")
    if type_code in (ENUM, SET) or flags & (ENUM_FLAG | SET_FLAG):
        return SchemaField(name, "string", nullable, "set" if flags & SET_FLAG else "enum")
    if type_code in _STRINGS:
        binary = charset == BINARY_CHARSET
        return SchemaField(
            name, "binary" if binary else "string", nullable, _string_name(type_code, binary)
        )
    if type_code == NULL:  # SELECT NULL AS x: no values to keep
        return SchemaField(name, "string", True, "null")
    raise SourceError(
        f"column {name!r}: MySQL type {_name(type_code)} has no Arrow form; leave the column "
        "out (columns:) or convert it in a query (e.g. ST_AsText(...) for a geometry)",
        retryable=False,
    )


def _name(type_code: int) -> str:
    names = {FLOAT: "float", DOUBLE: "double", GEOMETRY: "geometry"}
    return names.get(type_code, f"type code {type_code}")


def _string_name(type_code: int, binary: bool) -> str:
    if type_code in (TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, BLOB):
        return "blob" if binary else "text"
    if type_code == STRING:
        return "binary" if binary else "char"
    return "varbinary" if binary else "varchar"


def select_expr(field: SchemaField) -> str:
    """How a column is selected so that the reader gets a value it converts faithfully."""
    col = quote_ident(field.name, "mysql")
    source = field.source_type
    if source.startswith(("decimal", "date", "timestamp", "time")):
        return f"CAST({col} AS CHAR) AS {col}"
    if source.startswith("bit"):
        return f"CAST({col} AS UNSIGNED) AS {col}"
    return col


def select_list(fields: tuple[SchemaField, ...]) -> str:
    return ", ".join(select_expr(f) for f in fields)


def _fail(name: str, what: str, exc: BaseException | None = None) -> SourceError:
    detail = f": {exc}" if exc is not None else ""
    return SourceError(
        redact(f"column {name!r}: {what}{detail}"[:1000]),
        retryable=False,
    )


def _times(name: str, col: pa.Array) -> pa.Array:
    """TIME text ('HH:MM:SS[.ffffff]') -> time64[us]; a negative TIME or one of 24 hours or
    more is no time of day."""
    text = col.cast(pa.string())
    stamped = pc.binary_join_element_wise("1970-01-01 ", text, "")
    try:
        instants = stamped.cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _fail(
            name,
            "a TIME value is not a time of day (negative, or 24 hours or more) and has no "
            "faithful Arrow time64 value",
            exc,
        ) from exc
    micros = instants.cast(pa.int64())
    return micros.cast(pa.time64("us"))


def _cast(name: str, col: pa.Array, field: pa.Field) -> pa.Array:
    target = field.type
    if pa.types.is_time64(target):
        return _times(name, col)
    if pa.types.is_large_binary(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.binary() if pa.types.is_large_binary(col.type) else pa.string())
    if col.type.equals(target):
        return col
    if pa.types.is_boolean(target) and pa.types.is_integer(col.type):
        return pc.not_equal(col, 0)
    try:
        if pa.types.is_timestamp(target) and target.tz and pa.types.is_string(col.type):
            # the session's UTC text has no offset: parsed naive, then marked UTC
            return col.cast(pa.timestamp(target.unit)).cast(target)
        return col.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        if pa.types.is_date32(target) or pa.types.is_timestamp(target):
            raise _fail(
                name,
                "a zero or partial date ('0000-00-00', '2026-00-00') has no faithful Arrow "
                "value; it cannot be exported without changing it",
                exc,
            ) from exc
        raise _fail(
            name, f"cannot convert {col.type} to {target} without changing a value", exc
        ) from exc


def conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """A reader batch (its first len(target) columns) as the planned schema."""
    arrays = [_cast(field.name, batch.column(i), field) for i, field in enumerate(target)]
    return pa.RecordBatch.from_arrays(arrays, schema=target)
