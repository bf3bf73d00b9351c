import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_REQUESTED: _ClassVar[RunStatus]
    RUN_STATUS_PLANNING: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMMITTING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELED: _ClassVar[RunStatus]
    RUN_STATUS_SKIPPED: _ClassVar[RunStatus]
    RUN_STATUS_SCHEDULED: _ClassVar[RunStatus]
    RUN_STATUS_READY: _ClassVar[RunStatus]

class ChunkStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNK_STATUS_UNSPECIFIED: _ClassVar[ChunkStatus]
    CHUNK_STATUS_PENDING: _ClassVar[ChunkStatus]
    CHUNK_STATUS_RUNNING: _ClassVar[ChunkStatus]
    CHUNK_STATUS_RETRY_WAIT: _ClassVar[ChunkStatus]
    CHUNK_STATUS_COMPLETED: _ClassVar[ChunkStatus]
    CHUNK_STATUS_FAILED: _ClassVar[ChunkStatus]
    CHUNK_STATUS_CANCELED: _ClassVar[ChunkStatus]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_WARN: _ClassVar[Severity]
    SEVERITY_FAIL: _ClassVar[Severity]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_REQUESTED: RunStatus
RUN_STATUS_PLANNING: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMMITTING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELED: RunStatus
RUN_STATUS_SKIPPED: RunStatus
RUN_STATUS_SCHEDULED: RunStatus
RUN_STATUS_READY: RunStatus
CHUNK_STATUS_UNSPECIFIED: ChunkStatus
CHUNK_STATUS_PENDING: ChunkStatus
CHUNK_STATUS_RUNNING: ChunkStatus
CHUNK_STATUS_RETRY_WAIT: ChunkStatus
CHUNK_STATUS_COMPLETED: ChunkStatus
CHUNK_STATUS_FAILED: ChunkStatus
CHUNK_STATUS_CANCELED: ChunkStatus
SEVERITY_UNSPECIFIED: Severity
SEVERITY_WARN: Severity
SEVERITY_FAIL: Severity

class SourceSpec(_message.Message):
    __slots__ = ("engine", "url_env", "path", "sslmode", "sslrootcert", "sslcert", "sslkey")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    URL_ENV_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SSLMODE_FIELD_NUMBER: _ClassVar[int]
    SSLROOTCERT_FIELD_NUMBER: _ClassVar[int]
    SSLCERT_FIELD_NUMBER: _ClassVar[int]
    SSLKEY_FIELD_NUMBER: _ClassVar[int]
    engine: str
    url_env: str
    path: str
    sslmode: str
    sslrootcert: str
    sslcert: str
    sslkey: str
    def __init__(self, engine: _Optional[str] = ..., url_env: _Optional[str] = ..., path: _Optional[str] = ..., sslmode: _Optional[str] = ..., sslrootcert: _Optional[str] = ..., sslcert: _Optional[str] = ..., sslkey: _Optional[str] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("name", "source", "table", "query", "mode", "chunk_column", "chunk_size", "chunk_count", "format", "compression", "compression_level", "destination", "batch_size", "max_attempts", "row_group_rows", "columns", "cursor_column", "time_column", "days_window", "chunk_by_days", "max_file_bytes", "row_group_mb", "add_exported_at", "compression_profile", "row_filter", "schema_policy", "quality", "tuning_profile", "batch_size_memory_mb", "statement_timeout_s", "lock_timeout_s", "connect_timeout_s", "consistent_snapshot", "priority", "schedule", "chunk_by", "chunk_mb", "skip_empty", "shape_drift_ratio", "partition_column", "partition_granularity", "chunk_columns", "cursor_fallbacks", "row_hash", "row_hash_columns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ROW_GROUP_ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TIME_COLUMN_FIELD_NUMBER: _ClassVar[int]
    DAYS_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BY_DAYS_FIELD_NUMBER: _ClassVar[int]
    MAX_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROW_GROUP_MB_FIELD_NUMBER: _ClassVar[int]
    ADD_EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_PROFILE_FIELD_NUMBER: _ClassVar[int]
    ROW_FILTER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_POLICY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TUNING_PROFILE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LOCK_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MB_FIELD_NUMBER: _ClassVar[int]
    SKIP_EMPTY_FIELD_NUMBER: _ClassVar[int]
    SHAPE_DRIFT_RATIO_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COLUMN_FIELD_NUMBER: _ClassVar[int]
    PARTITION_GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    ROW_HASH_FIELD_NUMBER: _ClassVar[int]
    ROW_HASH_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: SourceSpec
    table: str
    query: str
    mode: str
    chunk_column: str
    chunk_size: int
    chunk_count: int
    format: str
    compression: str
    compression_level: int
    destination: str
    batch_size: int
    max_attempts: int
    row_group_rows: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    cursor_column: str
    time_column: str
    days_window: int
    chunk_by_days: int
    max_file_bytes: int
    row_group_mb: int
    add_exported_at: bool
    compression_profile: str
    row_filter: RowFilter
    schema_policy: str
    quality: QualityRules
    tuning_profile: str
    batch_size_memory_mb: int
    statement_timeout_s: int
    lock_timeout_s: int
    connect_timeout_s: int
    consistent_snapshot: bool
    priority: int
    schedule: ScheduleSpec
    chunk_by: str
    chunk_mb: int
    skip_empty: bool
    shape_drift_ratio: int
    partition_column: str
    partition_granularity: str
    chunk_columns: _containers.RepeatedScalarFieldContainer[str]
    cursor_fallbacks: _containers.RepeatedScalarFieldContainer[str]
    row_hash: bool
    row_hash_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., source: _Optional[_Union[SourceSpec, _Mapping]] = ..., table: _Optional[str] = ..., query: _Optional[str] = ..., mode: _Optional[str] = ..., chunk_column: _Optional[str] = ..., chunk_size: _Optional[int] = ..., chunk_count: _Optional[int] = ..., format: _Optional[str] = ..., compression: _Optional[str] = ..., compression_level: _Optional[int] = ..., destination: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_attempts: _Optional[int] = ..., row_group_rows: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., cursor_column: _Optional[str] = ..., time_column: _Optional[str] = ..., days_window: _Optional[int] = ..., chunk_by_days: _Optional[int] = ..., max_file_bytes: _Optional[int] = ..., row_group_mb: _Optional[int] = ..., add_exported_at: _Optional[bool] = ..., compression_profile: _Optional[str] = ..., row_filter: _Optional[_Union[RowFilter, _Mapping]] = ..., schema_policy: _Optional[str] = ..., quality: _Optional[_Union[QualityRules, _Mapping]] = ..., tuning_profile: _Optional[str] = ..., batch_size_memory_mb: _Optional[int] = ..., statement_timeout_s: _Optional[int] = ..., lock_timeout_s: _Optional[int] = ..., connect_timeout_s: _Optional[int] = ..., consistent_snapshot: _Optional[bool] = ..., priority: _Optional[int] = ..., schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., chunk_by: _Optional[str] = ..., chunk_mb: _Optional[int] = ..., skip_empty: _Optional[bool] = ..., shape_drift_ratio: _Optional[int] = ..., partition_column: _Optional[str] = ..., partition_granularity: _Optional[str] = ..., chunk_columns: _Optional[_Iterable[str]] = ..., cursor_fallbacks: _Optional[_Iterable[str]] = ..., row_hash: _Optional[bool] = ..., row_hash_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("cron", "timezone", "enabled", "catch_up", "overlap")
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    cron: str
    timezone: str
    enabled: bool
    catch_up: str
    overlap: str
    def __init__(self, cron: _Optional[str] = ..., timezone: _Optional[str] = ..., enabled: _Optional[bool] = ..., catch_up: _Optional[str] = ..., overlap: _Optional[str] = ...) -> None: ...

class QualityRules(_message.Message):
    __slots__ = ("row_count_min", "row_count_max", "null_ratio_max", "unique_columns", "on_violation")
    class NullRatioMaxEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROW_COUNT_MIN_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_MAX_FIELD_NUMBER: _ClassVar[int]
    NULL_RATIO_MAX_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ON_VIOLATION_FIELD_NUMBER: _ClassVar[int]
    row_count_min: int
    row_count_max: int
    null_ratio_max: _containers.ScalarMap[str, float]
    unique_columns: _containers.RepeatedScalarFieldContainer[str]
    on_violation: str
    def __init__(self, row_count_min: _Optional[int] = ..., row_count_max: _Optional[int] = ..., null_ratio_max: _Optional[_Mapping[str, float]] = ..., unique_columns: _Optional[_Iterable[str]] = ..., on_violation: _Optional[str] = ...) -> None: ...

class ChunkRange(_message.Message):
    __slots__ = ("index", "start_key", "end_key", "end_inclusive", "null_keys")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    END_INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    NULL_KEYS_FIELD_NUMBER: _ClassVar[int]
    index: int
    start_key: str
    end_key: str
    end_inclusive: bool
    null_keys: bool
    def __init__(self, index: _Optional[int] = ..., start_key: _Optional[str] = ..., end_key: _Optional[str] = ..., end_inclusive: _Optional[bool] = ..., null_keys: _Optional[bool] = ...) -> None: ...

class SchemaField(_message.Message):
    __slots__ = ("name", "type", "nullable", "source_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    nullable: bool
    source_type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., nullable: _Optional[bool] = ..., source_type: _Optional[str] = ...) -> None: ...

class Producer(_message.Message):
    __slots__ = ("service", "instance")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance: str
    def __init__(self, service: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("rss_mb_before", "rss_mb_after", "cpu_seconds_before", "cpu_seconds_after")
    RSS_MB_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_AFTER_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_AFTER_FIELD_NUMBER: _ClassVar[int]
    rss_mb_before: float
    rss_mb_after: float
    cpu_seconds_before: float
    cpu_seconds_after: float
    def __init__(self, rss_mb_before: _Optional[float] = ..., rss_mb_after: _Optional[float] = ..., cpu_seconds_before: _Optional[float] = ..., cpu_seconds_after: _Optional[float] = ...) -> None: ...

class RowFilter(_message.Message):
    __slots__ = ("column", "key_type", "low", "low_inclusive", "high", "high_inclusive", "fallbacks")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    LOW_INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    HIGH_INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    column: str
    key_type: str
    low: str
    low_inclusive: bool
    high: str
    high_inclusive: bool
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, column: _Optional[str] = ..., key_type: _Optional[str] = ..., low: _Optional[str] = ..., low_inclusive: _Optional[bool] = ..., high: _Optional[str] = ..., high_inclusive: _Optional[bool] = ..., fallbacks: _Optional[_Iterable[str]] = ...) -> None: ...

class ChunkTask(_message.Message):
    __slots__ = ("run_id", "plan_id", "spec", "range", "schema", "chunk_count", "snapshot_id", "priority")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    plan_id: str
    spec: ExportSpec
    range: ChunkRange
    schema: _containers.RepeatedCompositeFieldContainer[SchemaField]
    chunk_count: int
    snapshot_id: str
    priority: int
    def __init__(self, run_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., spec: _Optional[_Union[ExportSpec, _Mapping]] = ..., range: _Optional[_Union[ChunkRange, _Mapping]] = ..., schema: _Optional[_Iterable[_Union[SchemaField, _Mapping]]] = ..., chunk_count: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class RunRequested(_message.Message):
    __slots__ = ("spec", "requested_by", "plan_id", "options", "priority", "owner", "team")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    spec: ExportSpec
    requested_by: str
    plan_id: str
    options: _containers.ScalarMap[str, str]
    priority: int
    owner: str
    team: str
    def __init__(self, spec: _Optional[_Union[ExportSpec, _Mapping]] = ..., requested_by: _Optional[str] = ..., plan_id: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ...) -> None: ...

class PlanResolved(_message.Message):
    __slots__ = ("plan_id", "strategy", "chunks", "format", "compression", "compression_level", "batch_size", "batch_size_memory_mb", "tuning_profile", "schema", "schema_fingerprint", "row_estimate", "chunk_column", "key_low", "key_high", "source_engine", "source_table", "query_fingerprint", "row_filter", "temp_bytes_at_plan", "snapshot_id", "chunk_by", "key_columns")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TUNING_PROFILE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROW_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COLUMN_FIELD_NUMBER: _ClassVar[int]
    KEY_LOW_FIELD_NUMBER: _ClassVar[int]
    KEY_HIGH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENGINE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TABLE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROW_FILTER_FIELD_NUMBER: _ClassVar[int]
    TEMP_BYTES_AT_PLAN_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BY_FIELD_NUMBER: _ClassVar[int]
    KEY_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    strategy: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRange]
    format: str
    compression: str
    compression_level: int
    batch_size: int
    batch_size_memory_mb: int
    tuning_profile: str
    schema: _containers.RepeatedCompositeFieldContainer[SchemaField]
    schema_fingerprint: str
    row_estimate: int
    chunk_column: str
    key_low: str
    key_high: str
    source_engine: str
    source_table: str
    query_fingerprint: str
    row_filter: RowFilter
    temp_bytes_at_plan: int
    snapshot_id: str
    chunk_by: str
    key_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plan_id: _Optional[str] = ..., strategy: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkRange, _Mapping]]] = ..., format: _Optional[str] = ..., compression: _Optional[str] = ..., compression_level: _Optional[int] = ..., batch_size: _Optional[int] = ..., batch_size_memory_mb: _Optional[int] = ..., tuning_profile: _Optional[str] = ..., schema: _Optional[_Iterable[_Union[SchemaField, _Mapping]]] = ..., schema_fingerprint: _Optional[str] = ..., row_estimate: _Optional[int] = ..., chunk_column: _Optional[str] = ..., key_low: _Optional[str] = ..., key_high: _Optional[str] = ..., source_engine: _Optional[str] = ..., source_table: _Optional[str] = ..., query_fingerprint: _Optional[str] = ..., row_filter: _Optional[_Union[RowFilter, _Mapping]] = ..., temp_bytes_at_plan: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., chunk_by: _Optional[str] = ..., key_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanWarning(_message.Message):
    __slots__ = ("rule", "message")
    RULE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    message: str
    def __init__(self, rule: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ChunkStarted(_message.Message):
    __slots__ = ("chunk_index", "start_key", "end_key", "attempt", "priority")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    start_key: str
    end_key: str
    attempt: int
    priority: int
    def __init__(self, chunk_index: _Optional[int] = ..., start_key: _Optional[str] = ..., end_key: _Optional[str] = ..., attempt: _Optional[int] = ..., priority: _Optional[int] = ...) -> None: ...

class FileWritten(_message.Message):
    __slots__ = ("file_name", "rows", "bytes", "part_index", "chunk_index", "attempt", "content_fingerprint", "column_checksums", "max_lengths")
    class ColumnChecksumsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MaxLengthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    COLUMN_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    rows: int
    bytes: int
    part_index: int
    chunk_index: int
    attempt: int
    content_fingerprint: str
    column_checksums: _containers.ScalarMap[str, str]
    max_lengths: _containers.ScalarMap[str, int]
    def __init__(self, file_name: _Optional[str] = ..., rows: _Optional[int] = ..., bytes: _Optional[int] = ..., part_index: _Optional[int] = ..., chunk_index: _Optional[int] = ..., attempt: _Optional[int] = ..., content_fingerprint: _Optional[str] = ..., column_checksums: _Optional[_Mapping[str, str]] = ..., max_lengths: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ChunkCompleted(_message.Message):
    __slots__ = ("chunk_index", "rows", "files", "attempt", "source_rows", "source_counted")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_COUNTED_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    rows: int
    files: int
    attempt: int
    source_rows: int
    source_counted: bool
    def __init__(self, chunk_index: _Optional[int] = ..., rows: _Optional[int] = ..., files: _Optional[int] = ..., attempt: _Optional[int] = ..., source_rows: _Optional[int] = ..., source_counted: _Optional[bool] = ...) -> None: ...

class ChunkFailed(_message.Message):
    __slots__ = ("chunk_index", "error", "attempt", "retryable")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    error: str
    attempt: int
    retryable: bool
    def __init__(self, chunk_index: _Optional[int] = ..., error: _Optional[str] = ..., attempt: _Optional[int] = ..., retryable: _Optional[bool] = ...) -> None: ...

class RetryAttempted(_message.Message):
    __slots__ = ("attempt", "reason", "backoff_ms", "chunk_index")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    reason: str
    backoff_ms: int
    chunk_index: int
    def __init__(self, attempt: _Optional[int] = ..., reason: _Optional[str] = ..., backoff_ms: _Optional[int] = ..., chunk_index: _Optional[int] = ...) -> None: ...

class QualityIssue(_message.Message):
    __slots__ = ("severity", "rule", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: Severity
    rule: str
    message: str
    def __init__(self, severity: _Optional[_Union[Severity, str]] = ..., rule: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SchemaChanged(_message.Message):
    __slots__ = ("added", "removed", "type_changed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    TYPE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    type_changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., type_changed: _Optional[_Iterable[str]] = ...) -> None: ...

class Warning(_message.Message):
    __slots__ = ("context", "message")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    context: str
    message: str
    def __init__(self, context: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidationFailure(_message.Message):
    __slots__ = ("code", "part", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    part: str
    message: str
    def __init__(self, code: _Optional[str] = ..., part: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidationResult(_message.Message):
    __slots__ = ("passed", "failures")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    failures: _containers.RepeatedCompositeFieldContainer[ValidationFailure]
    def __init__(self, passed: _Optional[bool] = ..., failures: _Optional[_Iterable[_Union[ValidationFailure, _Mapping]]] = ...) -> None: ...

class ReconciliationResult(_message.Message):
    __slots__ = ("source_count", "exported_rows", "matched")
    SOURCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    source_count: int
    exported_rows: int
    matched: bool
    def __init__(self, source_count: _Optional[int] = ..., exported_rows: _Optional[int] = ..., matched: _Optional[bool] = ...) -> None: ...

class ManifestCommitted(_message.Message):
    __slots__ = ("manifest_uri", "fingerprint", "row_count", "part_count", "cursor_low", "cursor_high", "bytes", "cursor_column", "temp_bytes_at_end", "max_lengths")
    class MaxLengthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_LOW_FIELD_NUMBER: _ClassVar[int]
    CURSOR_HIGH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CURSOR_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TEMP_BYTES_AT_END_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    manifest_uri: str
    fingerprint: str
    row_count: int
    part_count: int
    cursor_low: str
    cursor_high: str
    bytes: int
    cursor_column: str
    temp_bytes_at_end: int
    max_lengths: _containers.ScalarMap[str, int]
    def __init__(self, manifest_uri: _Optional[str] = ..., fingerprint: _Optional[str] = ..., row_count: _Optional[int] = ..., part_count: _Optional[int] = ..., cursor_low: _Optional[str] = ..., cursor_high: _Optional[str] = ..., bytes: _Optional[int] = ..., cursor_column: _Optional[str] = ..., temp_bytes_at_end: _Optional[int] = ..., max_lengths: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RunCompleted(_message.Message):
    __slots__ = ("status", "error_message", "duration_ms", "skip_reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    error_message: str
    duration_ms: int
    skip_reason: str
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., error_message: _Optional[str] = ..., duration_ms: _Optional[int] = ..., skip_reason: _Optional[str] = ...) -> None: ...

class RunScheduled(_message.Message):
    __slots__ = ("spec", "scheduled_at", "priority", "cron", "timezone", "owner", "team")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    spec: ExportSpec
    scheduled_at: _timestamp_pb2.Timestamp
    priority: int
    cron: str
    timezone: str
    owner: str
    team: str
    def __init__(self, spec: _Optional[_Union[ExportSpec, _Mapping]] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ...) -> None: ...

class RunReady(_message.Message):
    __slots__ = ("reason", "waiting_for")
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    reason: str
    waiting_for: str
    def __init__(self, reason: _Optional[str] = ..., waiting_for: _Optional[str] = ...) -> None: ...

class CancelRequested(_message.Message):
    __slots__ = ("reason", "requested_by")
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    requested_by: str
    def __init__(self, reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_id", "run_id", "export_name", "occurred_at", "producer", "attempt", "resources", "event_version", "run_requested", "plan_resolved", "plan_warning", "chunk_started", "file_written", "chunk_completed", "chunk_failed", "retry_attempted", "quality_issue", "schema_changed", "warning", "validation_result", "reconciliation_result", "manifest_committed", "run_completed", "cancel_requested", "run_scheduled", "run_ready")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    EVENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PLAN_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    PLAN_WARNING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_STARTED_FIELD_NUMBER: _ClassVar[int]
    FILE_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FAILED_FIELD_NUMBER: _ClassVar[int]
    RETRY_ATTEMPTED_FIELD_NUMBER: _ClassVar[int]
    QUALITY_ISSUE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_CHANGED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_RESULT_FIELD_NUMBER: _ClassVar[int]
    RECONCILIATION_RESULT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RUN_SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    RUN_READY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    run_id: str
    export_name: str
    occurred_at: _timestamp_pb2.Timestamp
    producer: Producer
    attempt: int
    resources: ResourceUsage
    event_version: int
    run_requested: RunRequested
    plan_resolved: PlanResolved
    plan_warning: PlanWarning
    chunk_started: ChunkStarted
    file_written: FileWritten
    chunk_completed: ChunkCompleted
    chunk_failed: ChunkFailed
    retry_attempted: RetryAttempted
    quality_issue: QualityIssue
    schema_changed: SchemaChanged
    warning: Warning
    validation_result: ValidationResult
    reconciliation_result: ReconciliationResult
    manifest_committed: ManifestCommitted
    run_completed: RunCompleted
    cancel_requested: CancelRequested
    run_scheduled: RunScheduled
    run_ready: RunReady
    def __init__(self, event_id: _Optional[str] = ..., run_id: _Optional[str] = ..., export_name: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[_Union[Producer, _Mapping]] = ..., attempt: _Optional[int] = ..., resources: _Optional[_Union[ResourceUsage, _Mapping]] = ..., event_version: _Optional[int] = ..., run_requested: _Optional[_Union[RunRequested, _Mapping]] = ..., plan_resolved: _Optional[_Union[PlanResolved, _Mapping]] = ..., plan_warning: _Optional[_Union[PlanWarning, _Mapping]] = ..., chunk_started: _Optional[_Union[ChunkStarted, _Mapping]] = ..., file_written: _Optional[_Union[FileWritten, _Mapping]] = ..., chunk_completed: _Optional[_Union[ChunkCompleted, _Mapping]] = ..., chunk_failed: _Optional[_Union[ChunkFailed, _Mapping]] = ..., retry_attempted: _Optional[_Union[RetryAttempted, _Mapping]] = ..., quality_issue: _Optional[_Union[QualityIssue, _Mapping]] = ..., schema_changed: _Optional[_Union[SchemaChanged, _Mapping]] = ..., warning: _Optional[_Union[Warning, _Mapping]] = ..., validation_result: _Optional[_Union[ValidationResult, _Mapping]] = ..., reconciliation_result: _Optional[_Union[ReconciliationResult, _Mapping]] = ..., manifest_committed: _Optional[_Union[ManifestCommitted, _Mapping]] = ..., run_completed: _Optional[_Union[RunCompleted, _Mapping]] = ..., cancel_requested: _Optional[_Union[CancelRequested, _Mapping]] = ..., run_scheduled: _Optional[_Union[RunScheduled, _Mapping]] = ..., run_ready: _Optional[_Union[RunReady, _Mapping]] = ...) -> None: ...
