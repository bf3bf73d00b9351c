"""Hive-partitioned output: `partition_by` splits each chunk's rows into directories
`<key>=<value>/` of the run directory, one part writer per partition.

- Raw values (`partition_by: region`): the key is the column's name and the value its text
  (integers as digits, dates ISO, booleans `true`/`false`).
- A granularity of a date or timestamp column (`partition_by: {column: created_at,
  granularity: day}`): the key is `<column>_<granularity>` (`created_at_day=2026-01-05`,
  `_month=2026-01`, `_year=2026`), UTC for a timestamp with a zone. Not the column's own name:
  a reader that detects Hive partitions (DuckDB does by default) replaces a column of the
  key's name with the directory's value, which would turn every timestamp into its day.
- Every part still holds every column, the partition column included: a part is readable, and
  verifiable, on its own.
- NULL goes to `<key>=__HIVE_DEFAULT_PARTITION__` (Hive's and Spark's name); a value is
  percent-encoded outside `[A-Za-z0-9._-]` (so `/`, `=`, `%` and spaces never split a path).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sluiceway.common.domain.partitioning import directory, key_name

_FORMATS = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}
MAX_OPEN_WRITERS = 32  # partitions with an open part per chunk; the oldest is closed beyond
MAX_PARTITIONS_PER_CHUNK = 10_000


def partition_keys(column: pa.Array | pa.ChunkedArray, granularity: str) -> pa.Array:
    """Each row's partition value as text (NULL for NULL)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if granularity:
        return pc.strftime(column, format=_FORMATS[granularity])
    if pa.types.is_boolean(column.type):
        return pc.if_else(column, "true", "false")
    return column.cast(pa.string())


def split(batch: pa.RecordBatch, keys: pa.Array) -> list[tuple[str | None, pa.RecordBatch]]:
    """The batch's rows grouped by partition value, in order of first appearance; each group
    keeps the rows' order (all of it in Arrow's C kernels: a dictionary encoding, a stable
    sort of the codes, and their runs)."""
    if len(keys) == 0:
        return []
    encoded = pc.dictionary_encode(keys, null_encoding="encode")
    uniques = encoded.dictionary.to_pylist()
    if len(uniques) == 1:
        return [(uniques[0], batch)]
    codes = encoded.indices
    order = pc.sort_indices(codes)  # stable: within a value, the rows keep their order
    runs = pc.run_end_encode(codes.take(order))
    ends = runs.run_ends.to_pylist()
    groups = []
    start = 0
    for end, code in zip(ends, runs.values.to_pylist(), strict=True):
        rows = order.slice(start, end - start)
        groups.append((rows[0].as_py(), uniques[code], rows))
        start = end
    groups.sort(key=lambda g: g[0])
    return [(value, batch.take(rows)) for _, value, rows in groups]


class PartitionedWriter:
    """A chunk attempt's rows, split by partition, written by one part writer per partition
    directory (made by `make(directory)`). At most MAX_OPEN_WRITERS are open at once: the
    longest unused is closed (its part finished) when another is needed, and reopened with a
    new part if its partition comes back. `on_part_names` prefixes each part's name with its
    directory, so that names are relative to the run directory."""

    def __init__(
        self,
        column: str,
        granularity: str,
        make: Callable[[str], Any],
    ) -> None:
        self.column = column
        self.granularity = granularity
        self.key = key_name(column, granularity)
        self._make = make
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._done: list[tuple[str, Any]] = []  # (directory, written part)
        self._seen: set[str] = set()
        self._rows = 0

    @property
    def rows(self) -> int:
        return self._rows

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        keys = partition_keys(batch.column(self.column), self.granularity)
        for value, rows in split(batch, keys):
            self._writer(directory(self.key, value)).write(rows)
        self._rows += batch.num_rows

    def _writer(self, name: str) -> Any:
        writer = self._open.get(name)
        if writer is not None:
            self._open.move_to_end(name)
            return writer
        if name not in self._seen and len(self._seen) >= MAX_PARTITIONS_PER_CHUNK:
            raise ValueError(
                f"partition_by {self.key}: more than {MAX_PARTITIONS_PER_CHUNK} partitions in "
                "one chunk; choose a coarser granularity or a column with fewer values"
            )
        if len(self._open) >= MAX_OPEN_WRITERS:
            oldest, idle = self._open.popitem(last=False)
            self._done += [(oldest, part) for part in idle.close()]
        writer = self._make(name)
        self._open[name] = writer
        self._seen.add(name)
        return writer

    def close(self) -> list[tuple[str, Any]]:
        """Finish every open part; (directory, written part) of every part, in writing order."""
        while self._open:
            name, writer = self._open.popitem(last=False)
            self._done += [(name, part) for part in writer.close()]
        return list(self._done)

    def abort(self, *, keep: bool = False) -> None:
        while self._open:
            _, writer = self._open.popitem(last=False)
            writer.abort(keep=keep)
