"""The part writer: Arrow batches -> Parquet/CSV part files, atomically renamed, fingerprinted.

Each part is written to a hidden temporary name in the run directory, fsynced, renamed to its
final name (layout.part_name) and the directory fsynced: a reader never sees half a part, and a
part that exists survived a crash. On an object store the part is spooled locally and uploaded
under its final key once complete (destination.py). A chunk with zero rows produces no file.

CSV is gzip-compressed when compression == "gzip" and plain otherwise (the other codecs are
Parquet codecs; a .csv part is never zstd-compressed behind the reader's back).

Sizing (docs/config-files.md): rows per row group come from `row_group_rows`, or from
`row_group_bytes` divided by the Arrow width of the first batch; with `max_file_bytes` a row
group is also capped at 1/PART_SLACK of the target (from the bytes per row measured so far), so
a part closes within one small row group (+ footer) of the target.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sluiceway.common import layout
from sluiceway.common.colstats import PartStats
from sluiceway.common.destination import (
    Destination,
    Local,
    fsync_dir,
    local_files,
    make_dirs,
    set_aside_local,
)
from sluiceway.common.phases import Phases, timed

PARQUET_CODECS = {
    "zstd": "zstd",
    "snappy": "snappy",
    "gzip": "gzip",
    "lz4": "lz4",
    "none": "none",
    "": "zstd",
}


@dataclass(frozen=True)
class WrittenPart:
    file_name: str
    rows: int
    bytes: int
    part_index: int
    content_fingerprint: str
    opened_ns: int = 0  # wall clock when the part was opened (its span's start)
    # Parquet: each column's value checksum (colstats; `validate --depth full` recomputes it)
    column_checksums: Mapping[str, str] = field(default_factory=dict)
    # the longest value of each string/binary column, in bytes (shape drift)
    max_lengths: Mapping[str, int] = field(default_factory=dict)


__all__ = ["PartWriter", "WrittenPart", "fsync_dir", "make_dirs", "set_aside", "strays"]


# A row group is at most 1/PART_SLACK of max_file_bytes, so a part overshoots its target by less
# than 1/PART_SLACK (+ the footer); never fewer rows than MIN_ROW_GROUP_ROWS (tiny row groups
# cost more in metadata and per-group overhead than an overshoot of a tiny target).
PART_SLACK = 8
MIN_ROW_GROUP_ROWS = 1024
DEFAULT_ROW_GROUP_ROWS = 262_144
CSV_PROBE_ROWS = 1000
LEVELED_CODECS = ("zstd", "gzip")

DICTIONARY_MAX_DISTINCT_RATIO = 0.5
DICTIONARY_SAMPLE_ROWS = 10_000


def dictionary_columns(sample: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding: those whose first row group repeats values. Encoding a
    near-unique column (keys, timestamps, amounts, hashes, free text) into a dictionary only to
    fall back to plain pages costs CPU and makes larger files (measured on the bench table: 0.28
    against 0.18 CPU-s and 12 against 9 MB per million rows)."""
    keep: list[str] = []
    for name, column in zip(sample.column_names, sample.columns, strict=True):
        valid = len(column) - column.null_count
        if valid:
            try:
                distinct = pc.count_distinct(column, mode="only_valid").as_py()
            except pa.ArrowNotImplementedError:  # lists, extension types (uuid): no hash kernel
                continue
            if distinct / valid > DICTIONARY_MAX_DISTINCT_RATIO:
                continue
        keep.append(name)
    return keep


class _OpenPart:
    """One part being written: the file, the format writer and its counts."""

    def __init__(self, owner: PartWriter, part_index: int) -> None:
        self.part_index = part_index
        self.name = layout.part_name(
            owner.chunk_index, part_index, owner.attempt, owner.fmt, owner.compression
        )
        self.rows = 0
        self.opened_ns = time.time_ns()
        self.stats = PartStats(owner.schema)
        self._sink = owner.destination.open_part(str(owner.run_dir), self.name)
        self._file: BinaryIO = self._sink.file
        self._stream: Any = None
        self._writer: Any
        if owner.fmt == "parquet":
            codec = PARQUET_CODECS.get(owner.compression, owner.compression)
            self._writer = pq.ParquetWriter(
                self._file,
                owner.schema,
                use_dictionary=owner.dictionary_columns,
                compression=codec,
                compression_level=owner.compression_level
                if owner.compression_level > 0 and codec in LEVELED_CODECS
                else None,
            )
        elif owner.fmt == "csv":
            sink: Any = self._file
            if owner.compression == "gzip":
                # Python's gzip (zlib) takes a level, pyarrow's stream does not; mtime 0 and no
                # name make the bytes depend on the rows alone
                level = owner.compression_level if owner.compression_level > 0 else 6
                self._stream = gzip.GzipFile(
                    fileobj=self._file, mode="wb", compresslevel=level, mtime=0, filename=""
                )
                sink = self._stream
            self._writer = pacsv.CSVWriter(sink, owner.schema)
        else:
            self.discard()
            raise ValueError(f"unknown format {owner.fmt!r}")
        self.fmt = owner.fmt

    @property
    def size(self) -> int:
        return self._file.tell()

    def write(self, table: pa.Table, row_group_rows: int) -> None:
        self.stats.update(table)
        if self.fmt == "parquet":
            self._writer.write_table(table, row_group_size=row_group_rows)
        else:
            self._writer.write_table(table)
            if self._stream is not None:
                # push the compressed bytes out so the part's size is known (a sync flush
                # costs a few bytes per write unit)
                self._stream.flush(zlib.Z_SYNC_FLUSH)
        self.rows += table.num_rows

    def finish(self, phases: Phases | None) -> WrittenPart:
        with timed(phases, "encode"):
            self._writer.close()
            if self._stream is not None:
                self._stream.close()  # the gzip trailer; the file itself stays open
        with timed(phases, "fsync"):
            digest, size = self._sink.commit()
        return WrittenPart(
            self.name,
            self.rows,
            size,
            self.part_index,
            digest,
            self.opened_ns,
            # a CSV part's values cannot be read back as the same Arrow values: no checksums
            column_checksums=self.stats.checksums() if self.fmt == "parquet" else {},
            max_lengths=self.stats.max_lengths(),
        )

    def discard(self, *, keep: bool = False) -> None:
        """Close and delete the temporary file; with `keep`, close it (a Parquet footer makes
        it readable) and leave it for the caller to set aside."""
        for closer in (getattr(self, "_writer", None), self._stream):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self._sink.discard(keep=keep)


class PartWriter:
    """Stream one chunk attempt's batches into part files in `run_dir`.

    Rows are buffered only up to one row group (Parquet row group / CSV write unit), so
    memory is bounded whatever the chunk size. With `max_file_bytes` > 0 a part that reaches
    that size is closed and the next rows go to part n+1.

    Rows per row group: `row_group_rows`; with `row_group_bytes` > 0 instead, as many rows as
    fit that many bytes of Arrow data at the width of the first batch. With `max_file_bytes`,
    also at most 1/PART_SLACK of it at the output bytes per row (estimated from the first batch,
    then measured on the rows written), and never below MIN_ROW_GROUP_ROWS.

    `constants` are columns of the schema the batches do not carry, with one value for the
    whole chunk (the `_exported_at` column). `destination` is where `run_dir` is (a local
    directory when None). The time spent encoding and making parts durable is added to
    `phases` (encode, fsync).
    """

    def __init__(
        self,
        run_dir: Path | str,
        chunk_index: int,
        attempt: int,
        fmt: str,
        compression: str,
        compression_level: int,
        row_group_rows: int,
        schema: pa.Schema,
        max_file_bytes: int = 0,
        row_group_bytes: int = 0,
        constants: Mapping[str, object] | None = None,
        destination: Destination | None = None,
        phases: Phases | None = None,
        next_part_index: Callable[[], int] | None = None,
    ) -> None:
        if fmt not in layout.EXTENSIONS:
            raise ValueError(f"unknown format {fmt!r}")
        self.destination = destination or Local(str(run_dir))
        self._phases = phases
        self.run_dir = Path(run_dir)
        self.chunk_index = chunk_index
        self.attempt = attempt
        self.fmt = fmt
        self.compression = compression or "zstd"
        self.compression_level = compression_level
        self._base_rows = row_group_rows if row_group_rows > 0 else DEFAULT_ROW_GROUP_ROWS
        self.row_group_rows = self._base_rows  # the effective size, set by the first batch
        self.row_group_bytes = row_group_bytes
        self.schema = schema
        self.max_file_bytes = max_file_bytes
        self._constants = {
            name: pa.scalar(value, schema.field(name).type)
            for name, value in (constants or {}).items()
        }
        self._sized = False
        self._bytes_per_row = 0.0  # output bytes per row: estimated, then measured
        self._out_bytes = 0
        self._out_rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._current: _OpenPart | None = None
        self._written: list[WrittenPart] = []
        self._next_index = 0
        # partitioned output: one numbering shared by the chunk's writers (a part's index is
        # unique in its chunk attempt, as FileWritten's id needs)
        self._next_part_index = next_part_index
        self._closed = False
        # decided from the first row group, then kept for every part of this chunk
        self.dictionary_columns: list[str] | bool = True
        self._dictionary_decided = False

    @property
    def rows(self) -> int:
        done = sum(p.rows for p in self._written)
        return done + (self._current.rows if self._current else 0) + self._pending_rows

    def write(self, batch: pa.RecordBatch) -> None:
        if self._closed:
            raise RuntimeError("PartWriter is closed")
        if batch.num_rows == 0:
            return
        if self._constants:
            batch = self._with_constants(batch)
        if not batch.schema.equals(self.schema):
            batch = batch.cast(self.schema)
        if not self._sized:
            self._size_from(batch)
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _with_constants(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = {name: batch.column(name) for name in batch.schema.names}
        for name, value in self._constants.items():
            columns[name] = pa.repeat(value, batch.num_rows)
        return pa.RecordBatch.from_arrays(
            [columns[name] for name in self.schema.names], schema=self.schema
        )

    def _size_from(self, batch: pa.RecordBatch) -> None:
        """Rows per row group from the first batch's width (Arrow bytes per row)."""
        arrow_per_row = max(1.0, batch.nbytes / batch.num_rows)
        if self.row_group_bytes > 0:
            self._base_rows = max(1, int(self.row_group_bytes / arrow_per_row))
        if self.max_file_bytes > 0:
            # before anything is written: Arrow's width bounds a Parquet row's (compression
            # only shrinks it); a CSV row's text is measured on a sample
            self._bytes_per_row = arrow_per_row
            if self.fmt == "csv":
                sample = batch.slice(0, CSV_PROBE_ROWS)
                buf = pa.BufferOutputStream()
                pacsv.write_csv(sample, buf)
                self._bytes_per_row = max(1.0, buf.getvalue().size / sample.num_rows)
        self.row_group_rows = self._capped(self._base_rows)
        self._sized = True

    def _capped(self, rows: int) -> int:
        if self.max_file_bytes <= 0 or self._bytes_per_row <= 0:
            return rows
        cap = int(self.max_file_bytes / PART_SLACK / self._bytes_per_row)
        return min(rows, max(MIN_ROW_GROUP_ROWS, cap))

    def _flush(self, limit: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        head, rest = table.slice(0, limit), table.slice(limit)
        if not self._dictionary_decided:
            self.dictionary_columns = dictionary_columns(head.slice(0, DICTIONARY_SAMPLE_ROWS))
            self._dictionary_decided = True
        if self._current is None:
            if self._next_part_index is not None:
                self._next_index = self._next_part_index()
            self._current = _OpenPart(self, self._next_index)
            self._next_index += 1
        before = self._current.size
        with timed(self._phases, "encode"):
            self._current.write(head, self.row_group_rows)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        if self.max_file_bytes > 0:
            self._out_bytes += self._current.size - before
            self._out_rows += head.num_rows
            if self._out_bytes > 0:
                self._bytes_per_row = self._out_bytes / self._out_rows
                self.row_group_rows = self._capped(self._base_rows)
            if self._current.size >= self.max_file_bytes:
                self._written.append(self._current.finish(self._phases))
                self._current = None

    def close(self) -> list[WrittenPart]:
        """Flush what is buffered, finish the open part, and return every part written."""
        if self._closed:
            return list(self._written)
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._current is not None:
            self._written.append(self._current.finish(self._phases))
            self._current = None
        self._closed = True
        return list(self._written)

    def abort(self, *, keep: bool = False) -> None:
        """Drop the part being written (its temporary file; with `keep` it is closed and left
        in place). Finished parts stay: their names carry the attempt, so they never enter a
        manifest unless this attempt wins."""
        if self._current is not None:
            self._current.discard(keep=keep)
            self._current = None
        self._pending = []
        self._pending_rows = 0
        self._closed = True


def set_aside(run_dir: Path, target: Path, names: Iterable[str]) -> list[str]:
    """Move files of `run_dir` (losing or interrupted attempts) into `target`, never deleting
    them: they may help a post-mortem. Returns the names moved; absent ones are skipped."""
    return set_aside_local(run_dir, target, names)


def strays(run_dir: Path, keep: Iterable[str]) -> list[str]:
    """Files of a run directory that no manifest lists: parts of losing attempts, parts renamed
    by an attempt that died before FileWritten, temporary files of interrupted writes."""
    return stray_names(local_files(run_dir), keep)


def stray_names(entries: Iterable[str], keep: Iterable[str]) -> list[str]:
    """Of a run directory's file names, those no manifest lists (see strays)."""
    kept = {*keep, "manifest.json", "_SUCCESS"}
    return [name for name in entries if name not in kept]
