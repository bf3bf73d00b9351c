"""Per-column statistics of a part: a checksum of each column's values and the longest value
of each string or binary column.

The checksum of a column is defined on its values in row order, not on how a file encodes
them, so that `sluiceway validate --depth full` recomputes it from the Parquet part alone and
any change of a value, a NULL or the row order shows:

    xxh3_64( xxh3_64(validity) || xxh3_64(lengths) || xxh3_64(values) ), as "xxh3:<16 hex>"

- validity: one byte per row, 1 for a value and 0 for NULL;
- lengths (strings and binaries only): each value's byte length as a little-endian int64,
  0 for NULL;
- values: fixed-width columns (integers, floats, decimals, dates, times, timestamps, uuids)
  their little-endian bytes with NULLs as zeros, booleans one byte each (NULL: 0); strings and
  binaries their bytes concatenated.

Each of the three is one streaming hash, so the result does not depend on how the rows were
cut into batches or row groups. Lists and other nested columns get no checksum (their bytes
are not one canonical buffer); every other column does. All of it runs over Arrow buffers in
C (no per-row Python), measured in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

PREFIX = "xxh3:"


def _fixed_bytes(col: pa.Array) -> bytes | memoryview:
    """The values buffer of a fixed-width array without nulls, for exactly its rows."""
    width = col.type.byte_width
    buf = col.buffers()[1]
    if buf is None:
        return b""
    return memoryview(buf)[col.offset * width : (col.offset + len(col)) * width]


def _var_bytes(col: pa.Array) -> bytes | memoryview:
    """The concatenated values of a string/binary array without nulls."""
    offsets = col.buffers()[1]
    data = col.buffers()[2]
    if offsets is None or data is None or len(col) == 0:
        return b""
    large = pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type)
    kind = pa.int64() if large else pa.int32()
    ends = pa.Array.from_buffers(kind, len(col) + 1, [None, offsets], offset=col.offset)
    start, end = ends[0].as_py(), ends[len(col)].as_py()
    return memoryview(data)[start:end]


def _kind(typ: pa.DataType) -> str:
    """How a column is hashed: 'fixed', 'var', 'bool', or '' (none)."""
    if isinstance(typ, pa.BaseExtensionType):
        return _kind(typ.storage_type)
    if pa.types.is_boolean(typ):
        return "bool"
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        return "var"
    if pa.types.is_nested(typ) or pa.types.is_dictionary(typ) or pa.types.is_null(typ):
        return ""
    try:
        typ.byte_width  # noqa: B018  (variable-width types raise)
    except ValueError:
        return ""
    return "fixed"


def _zero(typ: pa.DataType) -> pa.Scalar:
    """The value a NULL is hashed as: zero bytes of the type's width, an empty string."""
    if pa.types.is_fixed_size_binary(typ):
        return pa.scalar(b"\x00" * typ.byte_width, typ)
    if pa.types.is_decimal(typ):
        return pa.scalar(Decimal(0), typ)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pa.scalar("", typ)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return pa.scalar(b"", typ)
    return pa.scalar(0, typ)


class ColumnDigest:
    """The streaming checksum (and, for strings and binaries, the longest value) of one column."""

    def __init__(self, typ: pa.DataType) -> None:
        self.kind = _kind(typ)
        self._storage = typ.storage_type if isinstance(typ, pa.BaseExtensionType) else typ
        self._validity = xxhash.xxh3_64()
        self._lengths = xxhash.xxh3_64()
        self._values = xxhash.xxh3_64()
        self.max_length = -1  # strings and binaries: the longest value in bytes; -1: none yet

    def update(self, column: pa.Array | pa.ChunkedArray) -> None:
        if not self.kind:
            return
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for col in chunks:
            if isinstance(col, pa.ExtensionArray):
                col = col.storage
            self._one(col)

    def _one(self, col: pa.Array) -> None:
        n = len(col)
        if n == 0:
            return
        self._validity.update(_fixed_bytes(col.is_valid().cast(pa.uint8())))
        if self.kind == "bool":
            values = pc.fill_null(col, False).cast(pa.uint8())
            self._values.update(_fixed_bytes(values))
            return
        if self.kind == "fixed":
            filled = col if col.null_count == 0 else pc.fill_null(col, _zero(self._storage))
            self._values.update(_fixed_bytes(filled))
            return
        lengths = pc.fill_null(pc.binary_length(col), 0).cast(pa.int64())
        self._lengths.update(_fixed_bytes(lengths))
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > self.max_length:
            self.max_length = int(longest)
        filled = col if col.null_count == 0 else pc.fill_null(col, _zero(self._storage))
        self._values.update(_var_bytes(filled))

    def checksum(self) -> str:
        if not self.kind:
            return ""
        combined = xxhash.xxh3_64(
            self._validity.digest() + self._lengths.digest() + self._values.digest()
        )
        return PREFIX + combined.hexdigest()


class PartStats:
    """The column digests of one part (or any stream of tables of one schema)."""

    def __init__(self, schema: pa.Schema) -> None:
        self._names = schema.names
        self._digests = [ColumnDigest(f.type) for f in schema]

    def update(self, table: pa.Table | pa.RecordBatch) -> None:
        for digest, column in zip(self._digests, table.columns, strict=True):
            digest.update(column)

    def checksums(self) -> dict[str, str]:
        """Column -> checksum, for every column that has one."""
        return {n: d.checksum() for n, d in zip(self._names, self._digests, strict=True) if d.kind}

    def max_lengths(self) -> dict[str, int]:
        """String/binary column -> its longest value in bytes (columns with a value only)."""
        return {
            n: d.max_length
            for n, d in zip(self._names, self._digests, strict=True)
            if d.kind == "var" and d.max_length >= 0
        }


def of_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> PartStats:
    stats = PartStats(schema)
    for batch in batches:
        stats.update(batch)
    return stats
