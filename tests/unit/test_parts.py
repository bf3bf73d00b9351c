"""The part writer: atomic, fingerprinted parts; nothing for an empty chunk; size rolling."""

from __future__ import annotations

import gzip
import io
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sluiceway.common import fingerprint, layout
from sluiceway.common.parts import PartWriter, dictionary_columns

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("price", pa.decimal128(12, 2))])


def _batch(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "id": list(range(start, start + n)),
            "name": [f"n{i}" if i % 5 else None for i in range(start, start + n)],
            "price": [Decimal(i) / 100 for i in range(start, start + n)],
        },
        schema=SCHEMA,
    )


def _writer(tmp_path: Path, fmt: str = "parquet", **kw: object) -> PartWriter:
    args: dict[str, object] = dict(
        chunk_index=3,
        attempt=2,
        fmt=fmt,
        compression="zstd",
        compression_level=0,
        row_group_rows=1000,
        schema=SCHEMA,
    )
    args.update(kw)
    return PartWriter(tmp_path, **args)  # type: ignore[arg-type]


def test_a_chunk_with_zero_rows_writes_no_file(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(_batch(0, 0))
    assert w.close() == []
    assert list(tmp_path.iterdir()) == []


def test_parquet_rows_round_trip_in_row_groups(tmp_path: Path) -> None:
    w = _writer(tmp_path, compression_level=3)
    for start in range(0, 2500, 700):
        w.write(_batch(start, min(700, 2500 - start)))
    parts = w.close()
    assert len(parts) == 1
    p = parts[0]
    assert p.file_name == layout.part_name(3, 0, 2, "parquet") and p.rows == 2500
    table = pq.read_table(tmp_path / p.file_name)
    assert table.equals(pa.Table.from_batches([_batch(0, 2500)]))
    meta = pq.ParquetFile(tmp_path / p.file_name).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert sorted(x.name for x in tmp_path.iterdir()) == [p.file_name]  # no temp file left


def test_the_fingerprint_and_size_are_those_of_the_final_file(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write(_batch(0, 10))
    (p,) = w.close()
    assert (p.content_fingerprint, p.bytes) == fingerprint.of_file(tmp_path / p.file_name)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_csv_parts_read_back_equal(tmp_path: Path, compression: str) -> None:
    w = _writer(tmp_path, fmt="csv", compression=compression)
    w.write(_batch(0, 1234))
    (p,) = w.close()
    assert p.file_name.endswith(".csv.gz" if compression == "gzip" else ".csv")
    raw = (tmp_path / p.file_name).read_bytes()
    if compression == "gzip":
        raw = gzip.decompress(raw)
    table = pacsv.read_csv(
        io.BytesIO(raw),
        convert_options=pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True),
    )
    assert table.equals(pa.Table.from_batches([_batch(0, 1234)]))


def test_parts_roll_over_at_max_file_bytes(tmp_path: Path) -> None:
    w = _writer(tmp_path, row_group_rows=500, max_file_bytes=1)
    for start in range(0, 2000, 300):
        w.write(_batch(start, min(300, 2000 - start)))
    parts = w.close()
    assert [p.part_index for p in parts] == [0, 1, 2, 3]
    assert [p.rows for p in parts] == [500, 500, 500, 500]
    back = pa.concat_tables(pq.read_table(tmp_path / p.file_name) for p in parts)
    assert back.equals(pa.Table.from_batches([_batch(0, 2000)]))


def test_abort_leaves_no_temporary_file(tmp_path: Path) -> None:
    w = _writer(tmp_path, row_group_rows=10)
    w.write(_batch(0, 25))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_near_unique_columns_are_not_dictionary_encoded_but_repeated_ones_are() -> None:
    import pyarrow as pa

    n = 1000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "hash": pa.array([f"h{i:08x}" for i in range(n)]),
            "city": pa.array(["Oslo", "Lyon", None, "Kyoto"] * (n // 4)),
            "empty": pa.array([None] * n, pa.string()),
            "qty": pa.array([i % 7 for i in range(n)], pa.int32()),
        }
    )
    assert dictionary_columns(table) == ["city", "empty", "qty"]


def test_columns_without_a_hash_kernel_are_written_plain() -> None:
    # lists and extension types (uuid) cannot be counted distinct: never dictionary-encoded
    sample = pa.table(
        {
            "tags": pa.array([[1, 2], [1, 2], None], type=pa.list_(pa.int64())),
            "kind": pa.array(["a", "a", "a"]),
        }
    )
    assert dictionary_columns(sample) == ["kind"]
