"""What every source offers the planner (introspection) and the worker (reading a key range)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sluiceway.common.domain.events import ChunkRange, ExportSpec, SchemaField
from sluiceway.common.phases import Phases

if TYPE_CHECKING:
    import pyarrow as pa


class SourceError(Exception):
    """A source failure. `retryable` says whether another attempt may succeed (connection lost,
    serialization failure, lock timeout, too many connections). The message is redacted.
    `sqlstate` is PostgreSQL's code for the failure when there is one (given or inferred);
    `code` is MySQL's error number, 0 when there is none."""

    def __init__(self, message: str, *, retryable: bool, sqlstate: str = "", code: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.sqlstate = sqlstate
        self.code = code


class SnapshotLost(SourceError):
    """consistent_snapshot: the plan's exported snapshot can no longer be imported (the
    planner session that held it ended: a restart, a kill, the maximum hold time). Permanent:
    reading another snapshot would break the consistent cut; re-running the export is the
    remedy."""

    def __init__(self, snapshot_id: str, detail: str = "") -> None:
        super().__init__(
            f"snapshot lost: the run's exported snapshot {snapshot_id!r} can no longer be "
            "imported (the planner session holding it ended); re-run the export"
            + (f" ({detail})" if detail else ""),
            retryable=False,
        )
        self.snapshot_id = snapshot_id


@dataclass(frozen=True)
class Introspection:
    schema: tuple[SchemaField, ...]
    row_estimate: int
    # chunk key bounds as text (integers for now); None when the table is empty or no key
    key_low: str | None = None
    key_high: str | None = None
    key_type: str = ""  # Arrow type of the chunk column, e.g. "int64"
    key_nullable: bool = False  # some rows have a NULL chunk key: they get a chunk of their own
    # the table's primary key (Arrow types), looked up only for a chunked `table:` export with
    # no chunk_column; the key bounds above are then those of a single-column primary key
    primary_key: tuple[SchemaField, ...] = ()
    # PostgreSQL: pg_stat_database.temp_bytes when introspected (PlanResolved.temp_bytes_at_plan)
    temp_bytes: int | None = None
    # consistent_snapshot: the exported snapshot this introspection read (PlanResolved's)
    snapshot_id: str = ""
    # chunk_by pages (PostgreSQL): the heap's blocks and their size when introspected
    pages: int = -1
    block_size: int = 0
    # chunk_by keys: the key columns, and the key tuple of every chunk_size-th row in key order
    key_fields: tuple[SchemaField, ...] = ()
    key_boundaries: tuple[tuple[int | str, ...], ...] = ()


class Source(Protocol):
    """Synchronous (drivers are); services call it from a worker thread."""

    def introspect(self, spec: ExportSpec) -> Introspection: ...

    def schema_of(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        """The export's columns, read from the source (PostgreSQL: `SELECT ... LIMIT 0`)."""
        ...

    def max_of(
        self, spec: ExportSpec, column: str, *, temporal: bool, fallbacks: tuple[str, ...] = ()
    ) -> str | None:
        """MAX(column) (of COALESCE(column, *fallbacks) with `fallbacks`) over the export's
        rows (its row filter applied) as text, ISO 8601 for dates and timestamps; None when
        there is no row."""
        ...

    def read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        phases: Phases | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Batches of `rng` (None: every row) conforming to `schema`, in bounded memory; the
        time each phase takes is added to `phases` (sluiceway.common.phases)."""
        ...

    def count_and_read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        snapshot: str = "",
        phases: Phases | None = None,
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        """COUNT(*) of `rng` and its batches, both from one snapshot (one transaction); with
        `snapshot` (PostgreSQL), the exported snapshot of that id, or SnapshotLost. The
        batches may be read from another thread than the count (one thread at a time)."""
        ...

    def count(self, spec: ExportSpec, rng: ChunkRange | None) -> int:
        """COUNT(*) with the same predicate as read()."""
        ...

    def key_boundaries(
        self, spec: ExportSpec, fields: tuple[SchemaField, ...], every: int
    ) -> list[list[int | str]]:
        """chunk_by keys: the key tuple (of `fields`, in order) of every `every`-th row in key
        order, the first row's first (sql.boundaries_sql); integers as numbers, the rest as
        the server's text."""
        ...

    def close(self) -> None: ...
