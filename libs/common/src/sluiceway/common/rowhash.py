"""The `_row_hash` column: a 64-bit hash of each row's covered columns, for change detection
and de-duplication downstream (equal rows, equal hashes, in any run and any part).

    _row_hash = xxh3_64(encoding of the row), seed 0, stored as int64 (the same 64 bits)

The encoding ("sluiceway-row-1") is the covered columns' values in the order the manifest
lists them, each self-delimiting, so that no two different rows give the same bytes:

- NULL: the byte 0x00; any value: the byte 0x01, then
- booleans: one byte, 0 or 1;
- integers, floats, decimals, dates, times, timestamps, durations, intervals: their Arrow
  values' little-endian bytes (a timestamp's integer in its column's unit, a decimal's
  unscaled two's complement);
- fixed-size binaries (uuids): their bytes;
- strings and binaries: the byte length as a little-endian uint32, then the bytes (UTF-8);
- lists (and maps, a list of key/value structs): the element count as a little-endian
  uint32, then each element encoded as above;
- structs: each field encoded as above, in the struct's order;
- dictionary-encoded columns: their values, as the plain column would be.

So a hash depends on the values and on the columns' exported Arrow types (an int32 and an
int64 of the same number differ); the manifest records the covered columns and the schema
has their types. The encoding is built in Arrow's kernels; the hash of each row is one call
of the xxhash library (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from sluiceway.common.fileopts import ROW_HASH

_EMPTY = pa.scalar(b"", pa.large_binary())
_NULL_TAG = pa.scalar(b"\x00", pa.large_binary())
_VALUE_TAG = pa.scalar(b"\x01", pa.large_binary())
HASH_ROWS = 65_536  # rows hashed per step: bounds the Python bytes objects alive at once

if sys.byteorder != "little":  # pragma: no cover - Arrow's buffers are the machine's order
    raise ImportError("the row hash encoding reads Arrow buffers as little-endian")


class RowHashError(ValueError):
    """A covered column has a type with no row encoding."""


def unhashable(typ: pa.DataType) -> str | None:
    """Why a column of this type cannot be covered, or None."""
    if isinstance(typ, pa.BaseExtensionType):
        return unhashable(typ.storage_type)
    if pa.types.is_dictionary(typ):
        return unhashable(typ.value_type)
    if pa.types.is_struct(typ):
        return next((p for f in typ for p in [unhashable(f.type)] if p), None)
    if pa.types.is_map(typ):
        return unhashable(typ.key_type) or unhashable(typ.item_type)
    if _is_list(typ):
        return unhashable(typ.value_type)
    if _is_var(typ) or pa.types.is_null(typ) or pa.types.is_boolean(typ):
        return None
    if pa.types.is_fixed_size_binary(typ) or _fixed_width(typ):
        return None
    return f"no row encoding for {typ}"


def row_hashes(columns: Sequence[pa.Array]) -> pa.Int64Array:
    """The hash of each row of `columns` (equal lengths, in covered order)."""
    rows = encode_rows(columns)
    digest = xxhash.xxh3_64_intdigest
    hashes = [
        digest(b)
        for start in range(0, len(rows), HASH_ROWS)
        for b in rows.slice(start, HASH_ROWS).to_pylist()
    ]
    # two's complement: the same 64 bits
    return pa.array(hashes, pa.uint64()).cast(pa.int64(), safe=False)


def with_row_hash(batch: pa.RecordBatch, covered: Sequence[str]) -> pa.RecordBatch:
    """`batch` with a last `_row_hash` column over its `covered` columns."""
    columns = []
    for name in covered:
        col = batch.column(name)
        if problem := unhashable(col.type):
            raise RowHashError(f"row_hash: column {name!r}: {problem}")
        columns.append(col)
    hashes = row_hashes(columns)
    return batch.append_column(pa.field(ROW_HASH, pa.int64(), nullable=False), hashes)


def encode_rows(columns: Sequence[pa.Array]) -> pa.LargeBinaryArray:
    """Each row's encoding: its columns' encodings concatenated (one join over every column's
    tag and value)."""
    if not columns:
        raise RowHashError("a row hash covers at least one column")
    parts = [p for c in columns for p in _parts(_array(c))]
    return pc.binary_join_element_wise(*parts, _EMPTY)


def _array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _parts(col: pa.Array) -> list[pa.Array | pa.Scalar]:
    """One column's encoding as pieces to concatenate: the NULL/value tag, then the value
    (empty for NULL). A column without NULLs has one tag for all its rows."""
    typ = col.type
    if isinstance(typ, pa.BaseExtensionType):
        return _parts(col.storage)
    if pa.types.is_dictionary(typ):
        return _parts(col.dictionary_decode())
    if pa.types.is_null(typ):
        return [pa.repeat(_NULL_TAG, len(col))]
    value = _value_bytes(col)
    if col.null_count == 0:
        return [_VALUE_TAG, value]
    tags = pc.if_else(col.is_valid(), _VALUE_TAG, _NULL_TAG)
    return [tags, value.fill_null(_EMPTY)]


def _encode(col: pa.Array) -> pa.LargeBinaryArray:
    """One column's encoding of each row, as one binary (never null)."""
    parts = _parts(col)
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, _EMPTY)


def _value_bytes(col: pa.Array) -> pa.LargeBinaryArray:
    """The value part of each row's encoding (null where the row is NULL)."""
    typ = col.type
    if pa.types.is_boolean(typ):
        return _view(col.cast(pa.uint8()), 1)
    if pa.types.is_fixed_size_binary(typ):
        return col.cast(pa.large_binary())
    if _is_var(typ):
        data = col.cast(pa.large_binary())
        return _join(_uint32(pc.binary_length(data)), data, col)
    if pa.types.is_struct(typ):
        fields = [_encode(f) for f in col.flatten()]
        if not fields:
            return _with_nulls(pa.array([b""] * len(col), pa.large_binary()), col)
        return _with_nulls(pc.binary_join_element_wise(*fields, _EMPTY), col)
    if _is_list(typ) or pa.types.is_map(typ):
        return _list_bytes(col)
    width = _fixed_width(typ)
    if width:
        return _view(col, width)
    raise RowHashError(unhashable(typ) or f"no row encoding for {typ}")


def _list_bytes(col: pa.Array) -> pa.LargeBinaryArray:
    """Element count, then the elements' encodings."""
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list_view(col.type):
        col = col.cast(pa.list_(col.type.value_field))
    elif pa.types.is_large_list_view(col.type):
        col = col.cast(pa.large_list(col.type.value_field))
    # each slot's elements, encoded: the child array in full (a map's: its key/value
    # structs) under the list's own offsets; NULL slots are masked after
    elements = _encode(col.values)
    make = pa.LargeListArray if pa.types.is_large_list(col.type) else pa.ListArray
    lists = make.from_arrays(col.offsets, elements)
    joined = pc.binary_join(lists, _EMPTY).cast(pa.large_binary())
    return _join(_uint32(pc.list_value_length(lists)), joined, col)


def _join(prefix: pa.Array, data: pa.Array, col: pa.Array) -> pa.LargeBinaryArray:
    return _with_nulls(pc.binary_join_element_wise(prefix, data, _EMPTY), col)


def _with_nulls(values: pa.Array, col: pa.Array) -> pa.LargeBinaryArray:
    """`values` with `col`'s NULLs."""
    if col.null_count == 0:
        return values
    return pc.if_else(col.is_valid(), values, pa.scalar(None, pa.large_binary()))


def _uint32(lengths: pa.Array) -> pa.LargeBinaryArray:
    """Each number as 4 little-endian bytes."""
    return _view(lengths.fill_null(0).cast(pa.uint32()), 4)


def _view(col: pa.Array, width: int) -> pa.LargeBinaryArray:
    """A fixed-width array's values as `width`-byte binaries (its own NULLs kept)."""
    fixed = pa.Array.from_buffers(
        pa.binary(width),
        len(col),
        [col.buffers()[0], col.buffers()[1]],
        null_count=col.null_count,
        offset=col.offset,
    )
    return fixed.cast(pa.large_binary())


def _fixed_width(typ: pa.DataType) -> int:
    """The byte width of a fixed-width primitive type (0 for any other)."""
    try:
        bits = int(typ.bit_width)
    except ValueError:
        return 0
    if pa.types.is_boolean(typ) or bits % 8:
        return 0
    return bits // 8


_VAR = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_string_view,
    pa.types.is_binary_view,
)
_LISTS = (
    pa.types.is_list,
    pa.types.is_large_list,
    pa.types.is_fixed_size_list,
    pa.types.is_list_view,
    pa.types.is_large_list_view,
)


def _is_var(typ: pa.DataType) -> bool:
    return any(bool(test(typ)) for test in _VAR)


def _is_list(typ: pa.DataType) -> bool:
    return any(bool(test(typ)) for test in _LISTS)
