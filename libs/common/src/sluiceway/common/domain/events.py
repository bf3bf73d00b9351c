"""Run events as frozen dataclasses: the pure mirror of proto/sluiceway/v1/events.proto."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class RunStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    REQUESTED = "REQUESTED"
    PLANNING = "PLANNING"
    RUNNING = "RUNNING"
    COMMITTING = "COMMITTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    SKIPPED = "SKIPPED"
    SCHEDULED = "SCHEDULED"
    READY = "READY"


class ChunkStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class Severity(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    WARN = "WARN"
    FAIL = "FAIL"


# ---- value objects shared by several bodies ----------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    engine: str = ""
    url_env: str = ""
    path: str = ""
    # PostgreSQL TLS, with libpq's names: sslmode, and the paths of the CA bundle and of a
    # client certificate and key ("" = whatever the URL says, else libpq's default)
    sslmode: str = ""
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""


@dataclass(frozen=True)
class RowFilter:
    """Rows of the run beside the chunk's key range (incremental cursor, time window)."""

    column: str = ""
    key_type: str = ""
    low: str = ""
    low_inclusive: bool = False
    high: str = ""
    high_inclusive: bool = False
    # the cursor COALESCE(column, *fallbacks): a row's first non-NULL of them
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualityRules:
    """Checked by the committer over the parts before the manifest; 0 / empty = no rule."""

    row_count_min: int = 0
    row_count_max: int = 0
    null_ratio_max: dict[str, float] = field(default_factory=dict)
    unique_columns: tuple[str, ...] = ()
    on_violation: str = ""  # "fail" (default) | "warn"

    @property
    def any(self) -> bool:
        return bool(
            self.row_count_min or self.row_count_max or self.null_ratio_max or self.unique_columns
        )


# Run priorities: 0 in an event or a spec means "not set" (normal).
PRIORITY_LOW = 1
PRIORITY_NORMAL = 2
PRIORITY_HIGH = 3
PRIORITIES: dict[str, int] = {"low": PRIORITY_LOW, "normal": PRIORITY_NORMAL, "high": PRIORITY_HIGH}


def priority_of(*candidates: int) -> int:
    """The first priority that is set (non-zero), else normal."""
    return next((p for p in candidates if p), PRIORITY_NORMAL)


@dataclass(frozen=True)
class ScheduleSpec:
    """When an export runs by itself (docs/config.md). An empty time zone is UTC."""

    cron: str = ""
    timezone: str = ""
    enabled: bool = True
    catch_up: str = ""  # all | latest (default) | none
    overlap: str = ""  # wait (default) | skip


@dataclass(frozen=True)
class ExportSpec:
    name: str = ""
    source: SourceSpec = field(default_factory=SourceSpec)
    table: str = ""
    query: str = ""
    mode: str = ""
    chunk_column: str = ""
    chunk_size: int = 0
    chunk_count: int = 0
    format: str = ""
    compression: str = ""
    compression_level: int = 0
    destination: str = ""
    batch_size: int = 0
    max_attempts: int = 0
    row_group_rows: int = 0
    columns: tuple[str, ...] = ()
    cursor_column: str = ""
    time_column: str = ""
    days_window: int = 0
    chunk_by_days: int = 0
    max_file_bytes: int = 0
    row_group_mb: int = 0
    add_exported_at: bool = False
    compression_profile: str = ""
    row_filter: RowFilter | None = None  # set by the planner for the run, never by a config
    schema_policy: str = ""  # drift from the last committed run: warn | continue | fail
    quality: QualityRules | None = None
    tuning_profile: str = ""  # fast | balanced | safe (sluiceway.common.tuning)
    batch_size_memory_mb: int = 0  # PostgreSQL batch byte hint; 0 = batch_size x row width
    statement_timeout_s: int = 0
    lock_timeout_s: int = 0
    connect_timeout_s: int = 0
    priority: int = 0  # 0 = normal; PRIORITY_LOW | PRIORITY_NORMAL | PRIORITY_HIGH
    schedule: ScheduleSpec | None = None
    consistent_snapshot: bool = False  # PostgreSQL: all chunks read the plan's snapshot
    chunk_by: str = ""  # "" = key ranges on chunk_column; CHUNK_BY_PAGES = heap page ranges
    chunk_mb: int = 0  # chunk_by pages: about this many MB of heap per chunk
    # zero rows: the run ends SKIPPED (no files, no manifest; the last commit stays the latest)
    skip_empty: bool = False
    # a string/binary column's longest value this many times the last commit's: a Warning
    # (0: not checked)
    shape_drift_ratio: int = 0
    # Hive-partitioned output (sluiceway.common.partitions): the column, and "" (its value),
    # "day", "month" or "year" (of a date or timestamp)
    partition_column: str = ""
    partition_granularity: str = ""
    # chunk_by keys: ranges of these columns' tuples (default: the table's primary key)
    chunk_columns: tuple[str, ...] = ()
    # incremental: the cursor is COALESCE(cursor_column, *cursor_fallbacks)
    cursor_fallbacks: tuple[str, ...] = ()
    # a last _row_hash column (sluiceway.common.rowhash) over these columns (empty: every
    # exported source column)
    row_hash: bool = False
    row_hash_columns: tuple[str, ...] = ()


ROW_MODES = ("incremental", "time_window")  # their rows may be chunked too, on a chunk_column
# chunk_by: ranges of heap pages [start_key, end_key) of a PostgreSQL table, read by ctid
CHUNK_BY_PAGES = "pages"
CHUNK_BY_KEYS = "keys"  # ranges of a (composite, any-typed) key's tuples, equal in rows


def is_chunked(spec: ExportSpec) -> bool:
    """Read in key ranges: mode chunked, or an incremental/time-window export that names a
    chunk_column (its new rows, or its window, split into ranges)."""
    return spec.mode == "chunked" or (spec.mode in ROW_MODES and bool(spec.chunk_column))


def reads_ranges(spec: ExportSpec) -> bool:
    """A chunk task of this spec reads its own range (a key range or a page range), not every
    row of the export."""
    return bool(spec.chunk_column) or spec.chunk_by in (CHUNK_BY_PAGES, CHUNK_BY_KEYS)


@dataclass(frozen=True)
class ChunkRange:
    index: int = 0
    start_key: str = ""
    end_key: str = ""
    end_inclusive: bool = False
    null_keys: bool = False


@dataclass(frozen=True)
class SchemaField:
    name: str = ""
    type: str = ""
    nullable: bool = True
    source_type: str = ""


@dataclass(frozen=True)
class Producer:
    service: str = ""
    instance: str = ""


@dataclass(frozen=True)
class ResourceUsage:
    rss_mb_before: float = 0.0
    rss_mb_after: float = 0.0
    cpu_seconds_before: float = 0.0
    cpu_seconds_after: float = 0.0


@dataclass(frozen=True)
class ChunkTask:
    """A unit of work on the task queue: the redacted spec and one key range, never rows."""

    run_id: str = ""
    plan_id: str = ""
    spec: ExportSpec = field(default_factory=ExportSpec)
    range: ChunkRange = field(default_factory=ChunkRange)
    schema: tuple[SchemaField, ...] = ()
    chunk_count: int = 0
    priority: int = 0  # the run's priority: the lane the task is queued on
    snapshot_id: str = ""  # PlanResolved.snapshot_id: the chunk's transaction imports it


@dataclass(frozen=True)
class ValidationFailure:
    code: str = ""
    part: str = ""
    message: str = ""


# ---- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequested:
    spec: ExportSpec = field(default_factory=ExportSpec)
    requested_by: str = ""
    plan_id: str = ""
    options: dict[str, str] = field(default_factory=dict)
    priority: int = 0  # 0 = the spec's priority
    owner: str = ""  # the principal the run belongs to, and its team (domain.access)
    team: str = ""


@dataclass(frozen=True)
class PlanResolved:
    plan_id: str = ""
    strategy: str = ""
    chunks: tuple[ChunkRange, ...] = ()
    format: str = ""
    compression: str = ""
    compression_level: int = 0
    batch_size: int = 0
    batch_size_memory_mb: int = 0
    tuning_profile: str = ""
    schema: tuple[SchemaField, ...] = ()
    schema_fingerprint: str = ""
    row_estimate: int = 0
    chunk_column: str = ""
    key_low: str = ""
    key_high: str = ""
    source_engine: str = ""
    source_table: str = ""
    query_fingerprint: str = ""
    row_filter: RowFilter | None = None
    temp_bytes_at_plan: int | None = None  # pg_stat_database.temp_bytes; None: not measured
    snapshot_id: str = ""  # consistent_snapshot: the exported snapshot every chunk imports
    chunk_by: str = ""  # CHUNK_BY_PAGES: chunks are heap page ranges (block numbers)
    # CHUNK_BY_KEYS: the key columns whose tuples the chunks' JSON bounds hold
    key_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanWarning:
    rule: str = ""
    message: str = ""


@dataclass(frozen=True)
class ChunkStarted:
    chunk_index: int = 0
    start_key: str = ""
    end_key: str = ""
    attempt: int = 0
    priority: int = 0  # effective priority when the task was taken (0: not recorded)


@dataclass(frozen=True)
class FileWritten:
    file_name: str = ""
    rows: int = 0
    bytes: int = 0
    part_index: int = 0
    chunk_index: int = 0
    attempt: int = 0
    content_fingerprint: str = ""
    # Parquet: column -> checksum of its values (sluiceway.common.colstats); string/binary
    # column -> its longest value in bytes
    column_checksums: dict[str, str] = field(default_factory=dict)
    max_lengths: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkCompleted:
    chunk_index: int = 0
    rows: int = 0
    files: int = 0
    attempt: int = 0
    # COUNT(*) of the range in the read's own snapshot, when the source could take it
    source_rows: int = 0
    source_counted: bool = False


@dataclass(frozen=True)
class ChunkFailed:
    """retryable=False means the chunk has failed for good (permanent error or budget spent)."""

    chunk_index: int = 0
    error: str = ""
    attempt: int = 0
    retryable: bool = False


@dataclass(frozen=True)
class RetryAttempted:
    attempt: int = 0
    reason: str = ""
    backoff_ms: int = 0
    chunk_index: int = 0


@dataclass(frozen=True)
class QualityIssue:
    severity: Severity = Severity.UNSPECIFIED
    rule: str = ""
    message: str = ""


@dataclass(frozen=True)
class SchemaChanged:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    type_changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Warning:
    context: str = ""
    message: str = ""


@dataclass(frozen=True)
class ValidationResult:
    passed: bool = False
    failures: tuple[ValidationFailure, ...] = ()


@dataclass(frozen=True)
class ReconciliationResult:
    source_count: int = 0
    exported_rows: int = 0
    matched: bool = False


@dataclass(frozen=True)
class ManifestCommitted:
    manifest_uri: str = ""
    fingerprint: str = ""
    row_count: int = 0
    part_count: int = 0
    cursor_low: str = ""
    cursor_high: str = ""
    bytes: int = 0
    cursor_column: str = ""
    temp_bytes_at_end: int | None = None  # pg_stat_database.temp_bytes; None: not measured
    # string/binary column -> the run's longest value in bytes (the next run's shape baseline)
    max_lengths: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunCompleted:
    """How a run ended. A run failed because it stayed open longer than the run stream's
    retention window has an error_message starting with EXPIRED (failure_cause "expired")."""

    status: RunStatus = RunStatus.UNSPECIFIED
    error_message: str = ""
    duration_ms: int = 0
    skip_reason: str = ""


EXPIRED = "run_expired"


@dataclass(frozen=True)
class RunScheduled:
    """One occurrence of a schedule, appended ahead of its time; the run id is derived from
    (export, scheduled_at), so every replica names the occurrence the same."""

    spec: ExportSpec = field(default_factory=ExportSpec)
    scheduled_at: datetime | None = None
    priority: int = 0
    cron: str = ""
    timezone: str = ""
    owner: str = ""  # the principal that applied the schedule, and its team
    team: str = ""


@dataclass(frozen=True)
class RunReady:
    """The occurrence's time has come; `waiting_for` names the export's run in flight."""

    reason: str = ""
    waiting_for: str = ""


@dataclass(frozen=True)
class CancelRequested:
    reason: str = ""
    requested_by: str = ""


Body = (
    RunRequested
    | PlanResolved
    | PlanWarning
    | ChunkStarted
    | FileWritten
    | ChunkCompleted
    | ChunkFailed
    | RetryAttempted
    | QualityIssue
    | SchemaChanged
    | Warning
    | ValidationResult
    | ReconciliationResult
    | ManifestCommitted
    | RunCompleted
    | CancelRequested
    | RunScheduled
    | RunReady
)

# Subject kind of each body: sluiceway.runs.<run_id>.<kind>. Changing one breaks the log.
KINDS: dict[type[Body], str] = {
    RunRequested: "requested",
    PlanResolved: "plan_resolved",
    PlanWarning: "plan_warning",
    ChunkStarted: "chunk_started",
    FileWritten: "file_written",
    ChunkCompleted: "chunk_completed",
    ChunkFailed: "chunk_failed",
    RetryAttempted: "retry_attempted",
    QualityIssue: "quality_issue",
    SchemaChanged: "schema_changed",
    Warning: "warning",
    ValidationResult: "validation_result",
    ReconciliationResult: "reconciliation_result",
    ManifestCommitted: "manifest_committed",
    RunCompleted: "completed",
    CancelRequested: "cancel_requested",
    RunScheduled: "scheduled",
    RunReady: "ready",
}
BODY_BY_KIND: dict[str, type[Body]] = {kind: cls for cls, kind in KINDS.items()}

# Facts that happen at most once per run: appended with an expected-last-subject-sequence of 0
# on their own subject, so two racing replicas cannot both write them.
ONCE_PER_RUN: frozenset[type[Body]] = frozenset(
    {PlanResolved, ManifestCommitted, RunCompleted, RunScheduled, RunReady}
)
# Chunk facts stored on a subject of their own per chunk (one more token), so that the stream
# can arbitrate them: the first ChunkCompleted wins (once only), and each ChunkStarted claims
# the next attempt number (appended only if no other start came first).
PER_CHUNK_SUBJECT: frozenset[type[Body]] = frozenset({ChunkStarted, ChunkCompleted})
ONCE_PER_CHUNK: frozenset[type[Body]] = frozenset({ChunkCompleted})


def kind_of(body: Body) -> str:
    return KINDS[type(body)]


@dataclass(frozen=True)
class RunEvent:
    """The envelope: who said what about which run, and when."""

    event_id: str
    run_id: str
    export_name: str
    occurred_at: datetime
    body: Body
    producer: Producer = field(default_factory=Producer)
    attempt: int = 0
    resources: ResourceUsage | None = None
    event_version: int = 1

    @property
    def kind(self) -> str:
        return kind_of(self.body)


def cursor_name(column: str, fallbacks: tuple[str, ...] = ()) -> str:
    """How a commit names its cursor: the column, or `coalesce(a,b,...)` for a composite one
    (a commit on another name is another cursor: the next run starts from every row)."""
    return f"coalesce({','.join((column, *fallbacks))})" if fallbacks else column
