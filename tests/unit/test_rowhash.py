"""The `_row_hash` column: the encoding built in Arrow's kernels equals, byte for byte, a
reference written value by value from the documented rules, for every supported type (nested
ones, NULLs and sliced arrays included); the hash is xxh3_64 of it; a pinned row keeps its
hash across versions; and what the export adds is listed in one place."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common import fileopts, rowhash
from sluiceway.common.domain.events import ExportSpec, SchemaField
from tests.support.rowref import as_int64, reference_rows

# ---- generated columns ---------------------------------------------------------------------

_SCALARS: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int8(), st.integers(-128, 127)),
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.uint32(), st.integers(0, 2**32 - 1)),
    (pa.uint64(), st.integers(0, 2**64 - 1)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.float32(), st.floats(width=32, allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.decimal128(12, 2), st.decimals(-(10**9), 10**9, places=2)),
    (pa.decimal128(38, 10), st.decimals(-(10**20), 10**20, places=10)),
    (pa.string(), st.text(max_size=8)),
    (pa.large_string(), st.text(max_size=8)),
    (pa.binary(), st.binary(max_size=8)),
    (pa.binary(16), st.binary(min_size=16, max_size=16)),
    (pa.date32(), st.dates(date(1900, 1, 1), date(2200, 1, 1))),
    (
        pa.timestamp("us", tz="UTC"),
        st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),
    ),
    (pa.timestamp("s"), st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1))),
]


def _nullable(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | values


@st.composite
def column_types(draw: st.DrawFn) -> tuple[pa.DataType, st.SearchStrategy[Any]]:
    typ, values = draw(st.sampled_from(_SCALARS))
    shape = draw(st.sampled_from(["plain", "plain", "list", "large_list", "struct", "map"]))
    if shape == "list":
        return pa.list_(typ), st.lists(_nullable(values), max_size=3)
    if shape == "large_list":
        return pa.large_list(typ), st.lists(_nullable(values), max_size=3)
    if shape == "struct":
        inner = pa.struct([("a", typ), ("b", pa.string())])
        return inner, st.fixed_dictionaries({"a": _nullable(values), "b": _nullable(st.text())})
    if shape == "map":
        keys = st.text(max_size=4)
        return pa.map_(pa.string(), typ), st.lists(st.tuples(keys, _nullable(values)), max_size=3)
    return typ, values


@st.composite
def tables(draw: st.DrawFn) -> list[pa.Array]:
    """Columns of equal length, some sliced (a batch's columns often start past offset 0)."""
    n = draw(st.integers(0, 12))
    head = draw(st.integers(0, 3))
    columns = []
    for _ in range(draw(st.integers(1, 4))):
        typ, values = draw(column_types())
        data = draw(st.lists(_nullable(values), min_size=n + head, max_size=n + head))
        columns.append(pa.array(data, typ).slice(head, n))
    return columns


@settings(max_examples=300)
@given(tables())
def test_the_encoding_is_the_documented_one(columns: list[pa.Array]) -> None:
    assert rowhash.encode_rows(columns).to_pylist() == reference_rows(columns)


@settings(max_examples=100)
@given(tables())
def test_the_hash_is_xxh3_64_of_the_encoding_as_int64(columns: list[pa.Array]) -> None:
    expected = [as_int64(xxhash.xxh3_64_intdigest(b)) for b in reference_rows(columns)]
    hashes = rowhash.row_hashes(columns)
    assert hashes.type == pa.int64()
    assert hashes.to_pylist() == expected


def test_a_pinned_row_keeps_its_hash() -> None:
    """A change of encoding, seed or algorithm changes every hash users have stored: it must
    come with a new ENCODING name, never silently."""
    columns = [pa.array([1], pa.int64()), pa.array(["abc"]), pa.array([None], pa.int32())]
    encoded = b"\x01" + (1).to_bytes(8, "little") + b"\x01\x03\x00\x00\x00abc" + b"\x00"
    assert rowhash.encode_rows(columns).to_pylist() == [encoded]
    assert rowhash.row_hashes(columns).to_pylist() == [-6265636022293101157]
    assert fileopts.ROW_HASH_ENCODING == "sluiceway-row-1"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([pa.array(["a"]), pa.array(["bc"])], [pa.array(["ab"]), pa.array(["c"])]),
        ([pa.array([None], pa.string())], [pa.array([""])]),
        ([pa.array([None], pa.int64())], [pa.array([0], pa.int64())]),
        ([pa.array([[]], pa.list_(pa.int8()))], [pa.array([None], pa.list_(pa.int8()))]),
        ([pa.array([[None]], pa.list_(pa.int8()))], [pa.array([[]], pa.list_(pa.int8()))]),
        (
            [pa.array([1], pa.int64()), pa.array([2], pa.int64())],
            [pa.array([2], pa.int64()), pa.array([1], pa.int64())],
        ),
    ],
)
def test_different_rows_have_different_encodings(
    left: list[pa.Array], right: list[pa.Array]
) -> None:
    assert rowhash.encode_rows(left).to_pylist() != rowhash.encode_rows(right).to_pylist()


def test_batches_and_dictionaries_do_not_change_the_hash() -> None:
    values = [f"v{i % 7}" if i % 5 else None for i in range(300)]
    ids = pa.array(range(300), pa.int64())
    whole = rowhash.row_hashes([ids, pa.array(values)]).to_pylist()
    cut = [
        h
        for start in (0, 100, 200)
        for h in rowhash.row_hashes(
            [ids.slice(start, 100), pa.array(values).slice(start, 100)]
        ).to_pylist()
    ]
    assert cut == whole
    encoded = pa.array(values).dictionary_encode()
    chunked = pa.chunked_array([pa.array(values[:150]), pa.array(values[150:])])
    assert rowhash.row_hashes([ids, encoded]).to_pylist() == whole
    assert rowhash.row_hashes([ids, chunked]).to_pylist() == whole


def test_more_rows_than_one_hashing_step() -> None:
    ids = pa.array(range(rowhash.HASH_ROWS + 3), pa.int64())
    hashes = rowhash.row_hashes([ids]).to_pylist()
    assert len(hashes) == len(ids)
    assert hashes[-1] == as_int64(
        xxhash.xxh3_64_intdigest(reference_rows([ids.slice(len(ids) - 1)])[0])
    )


def test_with_row_hash_appends_the_column_and_names_an_unhashable_one() -> None:
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int64()), "s": pa.array(["a", None])})
    out = rowhash.with_row_hash(batch, ("s",))
    assert out.schema.names == ["id", "s", fileopts.ROW_HASH]
    assert out.schema.field(fileopts.ROW_HASH).nullable is False
    assert (
        out.column(fileopts.ROW_HASH).to_pylist()
        == rowhash.row_hashes([batch.column("s")]).to_pylist()
    )
    union = pa.UnionArray.from_sparse(pa.array([0, 0], pa.int8()), [pa.array([1, 2], pa.int64())])
    odd = pa.record_batch({"id": batch.column("id"), "u": union})
    with pytest.raises(rowhash.RowHashError, match=r"row_hash: column 'u': no row encoding"):
        rowhash.with_row_hash(odd, ("id", "u"))
    with pytest.raises(rowhash.RowHashError, match="at least one column"):
        rowhash.encode_rows([])


def test_every_type_a_source_maps_to_has_an_encoding() -> None:
    """The schema's types (sluiceway.common.sources.arrow_type) are all hashable."""
    from sluiceway.common.sources import _SIMPLE, arrow_type

    texts = [
        *_SIMPLE,
        "decimal128(38, 9)",
        "timestamp[us, tz=UTC]",
        "time64[us]",
        "extension<arrow.uuid>",
        "month_day_nano_interval",
        "list<item: string>",
        "large_list<item: int64 not null>",
    ]
    for text in texts:
        assert rowhash.unhashable(arrow_type(text)) is None, text


def test_what_the_export_adds_and_what_the_hash_covers() -> None:
    src = (SchemaField("id", "int64"), SchemaField("name", "string"))
    both = ExportSpec(add_exported_at=True, row_hash=True)
    assert [f.name for f in fileopts.added_fields(both)] == [
        fileopts.EXPORTED_AT,
        fileopts.ROW_HASH,
    ]
    assert fileopts.added_fields(ExportSpec()) == ()
    planned = (*src, *fileopts.added_fields(both))
    assert fileopts.source_fields(planned, both) == src
    assert fileopts.source_fields(src, ExportSpec()) == src
    # by default every exported source column, never an added one
    assert fileopts.row_hash_columns(both, [f.name for f in planned]) == ("id", "name")
    named = ExportSpec(row_hash=True, row_hash_columns=("name",))
    assert fileopts.row_hash_columns(named, [f.name for f in planned]) == ("name",)


def test_a_uuid_is_its_16_bytes() -> None:
    raw = uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
    col = pa.ExtensionArray.from_storage(pa.uuid(), pa.array([raw, None], pa.binary(16)))
    assert rowhash.encode_rows([col]).to_pylist() == [b"\x01" + raw, b"\x00"]
    assert rowhash.encode_rows([col]).to_pylist() == reference_rows([col])


def test_decimal_and_timestamp_bytes_are_the_stored_integers() -> None:
    d = pa.array([Decimal("-1.25")], pa.decimal128(12, 2))
    t = pa.array([datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)], pa.timestamp("ms", tz="UTC"))
    assert rowhash.encode_rows([d, t]).to_pylist() == [
        b"\x01"
        + (-125).to_bytes(16, "little", signed=True)
        + b"\x01"
        + (1000).to_bytes(8, "little")
    ]
