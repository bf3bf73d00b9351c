"""A reference of the `_row_hash` encoding (sluiceway.common.rowhash), written value by value
from the documented rules, for the tests to check the Arrow-kernel version against."""

from __future__ import annotations

import struct
from datetime import date, datetime
from decimal import Context
from typing import Any
from uuid import UUID

import pyarrow as pa

_INT_FORMATS = {8: "b", 16: "h", 32: "i", 64: "q"}


def ref_value(typ: pa.DataType, value: Any) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + _ref_body(typ, value)


def _ref_body(typ: pa.DataType, value: Any) -> bytes:
    if isinstance(typ, pa.BaseExtensionType):  # arrow.uuid: Python gives a UUID
        return _ref_body(typ.storage_type, value.bytes if isinstance(value, UUID) else value)
    if pa.types.is_dictionary(typ):
        return _ref_body(typ.value_type, value)
    if pa.types.is_boolean(typ):
        return bytes([1 if value else 0])
    if pa.types.is_integer(typ):
        code = _INT_FORMATS[typ.bit_width]
        return struct.pack("<" + (code if pa.types.is_signed_integer(typ) else code.upper()), value)
    if pa.types.is_float32(typ):
        return struct.pack("<f", value)
    if pa.types.is_float64(typ):
        return struct.pack("<d", value)
    if pa.types.is_decimal(typ):
        # exact: 38 digits are more than the default context's 28
        unscaled = int(value.scaleb(typ.scale, Context(prec=80)))
        return unscaled.to_bytes(typ.bit_width // 8, "little", signed=True)
    if pa.types.is_date32(typ):
        return struct.pack("<i", (value - date(1970, 1, 1)).days)
    if pa.types.is_timestamp(typ):
        delta = value - datetime(1970, 1, 1, tzinfo=value.tzinfo)
        micros = (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds
        per_second = {"s": 1, "ms": 10**3, "us": 10**6}[typ.unit]
        return struct.pack("<q", micros * per_second // 10**6)
    if pa.types.is_fixed_size_binary(typ):
        return bytes(value)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        data = value.encode("utf-8")
        return struct.pack("<I", len(data)) + data
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return struct.pack("<I", len(value)) + value
    if pa.types.is_map(typ):
        entries = [
            b"\x01" + ref_value(typ.key_type, k) + ref_value(typ.item_type, v) for k, v in value
        ]
        return struct.pack("<I", len(entries)) + b"".join(entries)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        items = [ref_value(typ.value_type, v) for v in value]
        return struct.pack("<I", len(items)) + b"".join(items)
    if pa.types.is_struct(typ):
        return b"".join(ref_value(f.type, value[f.name]) for f in typ)
    raise AssertionError(f"no reference for {typ}")


def reference_rows(columns: list[pa.Array]) -> list[bytes]:
    values = [c.to_pylist() for c in columns]
    return [
        b"".join(ref_value(c.type, v[i]) for c, v in zip(columns, values, strict=True))
        for i in range(len(columns[0]))
    ]


def as_int64(h: int) -> int:
    return h - 2**64 if h >= 2**63 else h
