import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sluiceway.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyContext(_message.Message):
    __slots__ = ("plan_id", "force", "bypassed")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    BYPASSED_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    force: bool
    bypassed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plan_id: _Optional[str] = ..., force: _Optional[bool] = ..., bypassed: _Optional[_Iterable[str]] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("seq", "kind", "occurred_at", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    occurred_at: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "export_name", "status", "total_rows", "files_produced", "bytes_written", "files_committed", "duration_ms", "peak_rss_mb", "retries", "validated", "schema_changed", "quality_passed", "error_message", "tuning_profile", "batch_size", "batch_size_memory_mb", "format", "mode", "compression", "pg_temp_bytes_delta", "skip_reason", "source_count", "reconciled", "manifest_parts", "schema_fingerprint", "manifest_verification", "apply_context", "journal", "plan_id", "manifest_uri", "requested_at", "finished_at", "chunks_total", "chunks_completed", "chunks_failed", "row_estimate", "last_seq", "anomalies", "manifest_fingerprint", "failure_cause", "scheduled_at", "priority", "waiting_reason", "owner", "team")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    FILES_PRODUCED_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FILES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    VALIDATED_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_CHANGED_FIELD_NUMBER: _ClassVar[int]
    QUALITY_PASSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TUNING_PROFILE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PG_TEMP_BYTES_DELTA_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_PARTS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    APPLY_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    ROW_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CAUSE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    export_name: str
    status: _events_pb2.RunStatus
    total_rows: int
    files_produced: int
    bytes_written: int
    files_committed: int
    duration_ms: int
    peak_rss_mb: float
    retries: int
    validated: bool
    schema_changed: bool
    quality_passed: bool
    error_message: str
    tuning_profile: str
    batch_size: int
    batch_size_memory_mb: int
    format: str
    mode: str
    compression: str
    pg_temp_bytes_delta: int
    skip_reason: str
    source_count: int
    reconciled: bool
    manifest_parts: int
    schema_fingerprint: str
    manifest_verification: str
    apply_context: ApplyContext
    journal: _containers.RepeatedCompositeFieldContainer[JournalEntry]
    plan_id: str
    manifest_uri: str
    requested_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    chunks_total: int
    chunks_completed: int
    chunks_failed: int
    row_estimate: int
    last_seq: int
    anomalies: int
    manifest_fingerprint: str
    failure_cause: str
    scheduled_at: _timestamp_pb2.Timestamp
    priority: int
    waiting_reason: str
    owner: str
    team: str
    def __init__(self, run_id: _Optional[str] = ..., export_name: _Optional[str] = ..., status: _Optional[_Union[_events_pb2.RunStatus, str]] = ..., total_rows: _Optional[int] = ..., files_produced: _Optional[int] = ..., bytes_written: _Optional[int] = ..., files_committed: _Optional[int] = ..., duration_ms: _Optional[int] = ..., peak_rss_mb: _Optional[float] = ..., retries: _Optional[int] = ..., validated: _Optional[bool] = ..., schema_changed: _Optional[bool] = ..., quality_passed: _Optional[bool] = ..., error_message: _Optional[str] = ..., tuning_profile: _Optional[str] = ..., batch_size: _Optional[int] = ..., batch_size_memory_mb: _Optional[int] = ..., format: _Optional[str] = ..., mode: _Optional[str] = ..., compression: _Optional[str] = ..., pg_temp_bytes_delta: _Optional[int] = ..., skip_reason: _Optional[str] = ..., source_count: _Optional[int] = ..., reconciled: _Optional[bool] = ..., manifest_parts: _Optional[int] = ..., schema_fingerprint: _Optional[str] = ..., manifest_verification: _Optional[str] = ..., apply_context: _Optional[_Union[ApplyContext, _Mapping]] = ..., journal: _Optional[_Iterable[_Union[JournalEntry, _Mapping]]] = ..., plan_id: _Optional[str] = ..., manifest_uri: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., chunks_total: _Optional[int] = ..., chunks_completed: _Optional[int] = ..., chunks_failed: _Optional[int] = ..., row_estimate: _Optional[int] = ..., last_seq: _Optional[int] = ..., anomalies: _Optional[int] = ..., manifest_fingerprint: _Optional[str] = ..., failure_cause: _Optional[str] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ..., waiting_reason: _Optional[str] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "min_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    min_seq: int
    def __init__(self, run_id: _Optional[str] = ..., min_seq: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("export_name", "statuses", "requested_after", "requested_before", "page_size", "page_token")
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    export_name: str
    statuses: _containers.RepeatedScalarFieldContainer[_events_pb2.RunStatus]
    requested_after: _timestamp_pb2.Timestamp
    requested_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, export_name: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_events_pb2.RunStatus, str]]] = ..., requested_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ChunkInfo(_message.Message):
    __slots__ = ("chunk_index", "status", "start_key", "end_key", "attempt", "rows", "files", "error", "winning_attempt", "started_at", "finished_at", "priority")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WINNING_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    status: _events_pb2.ChunkStatus
    start_key: str
    end_key: str
    attempt: int
    rows: int
    files: int
    error: str
    winning_attempt: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    priority: int
    def __init__(self, chunk_index: _Optional[int] = ..., status: _Optional[_Union[_events_pb2.ChunkStatus, str]] = ..., start_key: _Optional[str] = ..., end_key: _Optional[str] = ..., attempt: _Optional[int] = ..., rows: _Optional[int] = ..., files: _Optional[int] = ..., error: _Optional[str] = ..., winning_attempt: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class ListChunksRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListChunksResponse(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkInfo]
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkInfo, _Mapping]]] = ...) -> None: ...

class PartInfo(_message.Message):
    __slots__ = ("file_name", "chunk_index", "part_index", "attempt", "rows", "bytes", "content_fingerprint", "committed")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    chunk_index: int
    part_index: int
    attempt: int
    rows: int
    bytes: int
    content_fingerprint: str
    committed: bool
    def __init__(self, file_name: _Optional[str] = ..., chunk_index: _Optional[int] = ..., part_index: _Optional[int] = ..., attempt: _Optional[int] = ..., rows: _Optional[int] = ..., bytes: _Optional[int] = ..., content_fingerprint: _Optional[str] = ..., committed: _Optional[bool] = ...) -> None: ...

class ListPartsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListPartsResponse(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[PartInfo]
    def __init__(self, parts: _Optional[_Iterable[_Union[PartInfo, _Mapping]]] = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("seq", "kind", "event")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    event: _events_pb2.RunEvent
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., event: _Optional[_Union[_events_pb2.RunEvent, _Mapping]] = ...) -> None: ...

class GetRunEventsRequest(_message.Message):
    __slots__ = ("run_id", "after_seq", "page_size")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    page_size: int
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class GetRunEventsResponse(_message.Message):
    __slots__ = ("events", "next_after_seq")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    next_after_seq: int
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., next_after_seq: _Optional[int] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "from_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_seq: int
    def __init__(self, run_id: _Optional[str] = ..., from_seq: _Optional[int] = ...) -> None: ...
