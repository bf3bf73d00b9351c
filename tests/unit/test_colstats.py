"""Column checksums: defined on values in row order, so that they survive any cut into batches
and a Parquet round trip, and change with any value, NULL or order; the longest string."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common.colstats import PartStats
from sluiceway.common.domain import verify

SCHEMA = pa.schema(
    [
        ("i", pa.int64()),
        ("s", pa.string()),
        ("b", pa.bool_()),
        ("d", pa.decimal128(12, 2)),
        ("t", pa.timestamp("us", tz="UTC")),
        ("raw", pa.binary()),
        ("u", pa.uuid()),
        ("l", pa.list_(pa.int32())),
    ]
)

rows = st.lists(
    st.fixed_dictionaries(
        {
            "i": st.none() | st.integers(-(2**63), 2**63 - 1),
            "s": st.none() | st.text(max_size=12),
            "b": st.none() | st.booleans(),
            "d": st.none() | st.decimals(-(10**9), 10**9, places=2),
            "t": st.none()
            | st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
            "raw": st.none() | st.binary(max_size=8),
            "u": st.none() | st.binary(min_size=16, max_size=16),
            "l": st.none() | st.lists(st.integers(0, 9), max_size=3),
        }
    ),
    min_size=1,
    max_size=40,
)


def _table(data: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(data, schema=SCHEMA)


def _stats(*tables: pa.Table | pa.RecordBatch) -> PartStats:
    s = PartStats(SCHEMA)
    for t in tables:
        s.update(t)
    return s


@settings(max_examples=150, deadline=None)
@given(rows, st.integers(1, 7))
def test_a_checksum_depends_on_the_values_not_on_batches_or_files(
    data: list[dict[str, object]], size: int
) -> None:
    table = _table(data)
    whole = _stats(table)
    assert _stats(*table.to_batches(max_chunksize=size)).checksums() == whole.checksums()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=size)
    buf.seek(0)
    back = pq.ParquetFile(buf)
    again = PartStats(back.schema_arrow)
    for batch in back.iter_batches(batch_size=3):
        again.update(batch)
    assert again.checksums() == whole.checksums()
    assert set(whole.checksums()) == {"i", "s", "b", "d", "t", "raw", "u"}  # lists: none


@settings(max_examples=150, deadline=None)
@given(rows, st.data())
def test_any_changed_value_or_null_changes_its_column_only(data, draw) -> None:  # type: ignore[no-untyped-def]
    table = _table(data)
    before = _stats(table).checksums()
    row = draw.draw(st.integers(0, len(data) - 1))
    column = draw.draw(st.sampled_from(["i", "s", "b", "raw"]))
    old = data[row][column]
    new = {
        "i": 7 if old != 7 else 8,
        "s": "x" if old != "x" else "y",
        "b": not old if old is not None else True,
        "raw": b"\x01" if old != b"\x01" else b"\x02",
    }[column]
    for replacement in (new, None if old is not None else new):
        changed = [dict(r) for r in data]
        changed[row][column] = replacement
        after = _stats(_table(changed)).checksums()
        assert after[column] != before[column]
        assert {k: v for k, v in after.items() if k != column} == {
            k: v for k, v in before.items() if k != column
        }


def test_null_empty_and_order_are_told_apart() -> None:
    def sums(values: list[str | None]) -> str:
        s = PartStats(pa.schema([("s", pa.string())]))
        s.update(pa.table({"s": pa.array(values, pa.string())}))
        return s.checksums()["s"]

    assert len({sums([None, "a"]), sums(["", "a"]), sums(["a", None]), sums(["a", ""])}) == 4
    assert sums(["ab", "c"]) != sums(["a", "bc"])  # the lengths are part of it


def test_the_longest_string_in_bytes() -> None:
    s = PartStats(pa.schema([("s", pa.string()), ("n", pa.int32())]))
    s.update(pa.table({"s": ["a", None, "東京"], "n": [1, 2, 3]}))
    s.update(pa.table({"s": ["xy", None, None], "n": [1, 2, 3]}))
    assert s.max_lengths() == {"s": 6}
    assert PartStats(pa.schema([("s", pa.string())])).max_lengths() == {}


def test_check_columns_names_the_column_that_differs() -> None:
    claim = verify.PartClaim("p.parquet", 1, 1, "x", {"a": "xxh3:1", "b": "xxh3:2"})
    assert verify.check_columns(claim, {"a": "xxh3:1", "b": "xxh3:2", "c": "xxh3:3"}) == []
    failures = verify.check_columns(claim, {"a": "xxh3:9"})
    assert [f.code for f in failures] == [verify.COLUMN_CHECKSUM_MISMATCH] * 2
    assert "column 'a'" in failures[0].message and "not in the part" in failures[1].message
