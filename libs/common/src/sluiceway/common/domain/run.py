"""A run's state as fold(events): pure, deterministic, and never leaves the transition tables."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import assert_never

from .access import Owner
from .events import (
    Body,
    CancelRequested,
    ChunkCompleted,
    ChunkFailed,
    ChunkRange,
    ChunkStarted,
    ChunkStatus,
    ExportSpec,
    FileWritten,
    ManifestCommitted,
    PlanResolved,
    PlanWarning,
    QualityIssue,
    ReconciliationResult,
    RetryAttempted,
    RunCompleted,
    RunEvent,
    RunReady,
    RunRequested,
    RunScheduled,
    RunStatus,
    SchemaChanged,
    Severity,
    ValidationResult,
    Warning,
    priority_of,
)
from .lifecycle import TERMINAL_RUN, next_chunk_status, next_run_status, run_trigger


@dataclass(frozen=True)
class Anomaly:
    """An event the tables forbid: recorded, never applied."""

    event_id: str
    kind: str
    reason: str


@dataclass
class ChunkState:
    range: ChunkRange
    status: ChunkStatus = ChunkStatus.PENDING
    attempt: int = 0
    winning_attempt: int = 0
    rows: int = 0
    source_rows: int | None = None  # the winning attempt's snapshot count, when taken
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int = 0  # effective priority of the latest attempt when its task was taken
    # (attempt, part_index) -> the file that attempt wrote
    files: dict[tuple[int, int], FileWritten] = field(default_factory=dict)

    @property
    def index(self) -> int:
        return self.range.index

    def winning_files(self) -> list[FileWritten]:
        if self.status is not ChunkStatus.COMPLETED:
            return []
        return [f for (a, _), f in sorted(self.files.items()) if a == self.winning_attempt]

    def losing_files(self) -> list[FileWritten]:
        """Files of attempts that did not win: never in a manifest, moved aside."""
        if self.status is not ChunkStatus.COMPLETED:
            return []
        return [f for (a, _), f in sorted(self.files.items()) if a != self.winning_attempt]


@dataclass
class RunState:
    run_id: str
    export_name: str = ""
    status: RunStatus = RunStatus.UNSPECIFIED
    spec: ExportSpec | None = None
    requested: RunRequested | None = None
    scheduled: RunScheduled | None = None
    ready: RunReady | None = None
    plan: PlanResolved | None = None
    chunks: dict[int, ChunkState] = field(default_factory=dict)
    requested_at: datetime | None = None
    started_at: datetime | None = None
    last_event_at: datetime | None = None
    completion: RunCompleted | None = None
    finished_at: datetime | None = None
    manifest: ManifestCommitted | None = None
    validation: ValidationResult | None = None
    reconciliation: ReconciliationResult | None = None
    plan_warnings: list[PlanWarning] = field(default_factory=list)
    quality_issues: list[QualityIssue] = field(default_factory=list)
    schema_changes: list[SchemaChanged] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)
    cancel: CancelRequested | None = None
    retries: int = 0
    peak_rss_mb: float = 0.0
    anomalies: list[Anomaly] = field(default_factory=list)
    # event_id -> body of every applied event: a redelivery is recognised and skipped
    applied: dict[str, Body] = field(default_factory=dict)
    # event_id -> bodies recorded as anomalies: a redelivery of a refused fact is refused once
    refused: dict[str, list[Body]] = field(default_factory=dict)

    # ---- derived views ----------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_RUN

    @property
    def scheduled_at(self) -> datetime | None:
        return self.scheduled.scheduled_at if self.scheduled is not None else None

    @property
    def owner(self) -> Owner:
        """Whom the run belongs to: its request's owner, else its occurrence's."""
        for body in (self.requested, self.scheduled):
            if body is not None and body.owner:
                return Owner(body.owner, body.team)
        return Owner()

    @property
    def priority(self) -> int:
        """The run's priority: the submission's, else the occurrence's, else the spec's."""
        return priority_of(
            self.requested.priority if self.requested is not None else 0,
            self.scheduled.priority if self.scheduled is not None else 0,
            self.spec.priority if self.spec is not None else 0,
        )

    def all_chunks_completed(self) -> bool:
        return bool(self.chunks) and all(
            c.status is ChunkStatus.COMPLETED for c in self.chunks.values()
        )

    def failed_chunks(self) -> list[ChunkState]:
        return [c for c in self.chunks.values() if c.status is ChunkStatus.FAILED]

    def committed_files(self) -> list[FileWritten]:
        """The winning attempt's files of every completed chunk, in (chunk, part) order."""
        out: list[FileWritten] = []
        for index in sorted(self.chunks):
            out.extend(self.chunks[index].winning_files())
        return out

    def all_files(self) -> list[FileWritten]:
        return [f for i in sorted(self.chunks) for _, f in sorted(self.chunks[i].files.items())]

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.committed_files())

    @property
    def quality_passed(self) -> bool:
        return all(q.severity is not Severity.FAIL for q in self.quality_issues)


def _anomaly(state: RunState, event: RunEvent, reason: str) -> RunState:
    state.anomalies.append(Anomaly(event.event_id, event.kind, reason))
    state.refused.setdefault(event.event_id, []).append(event.body)
    return state


def _chunk_trigger(event: RunEvent) -> str:
    body = event.body
    if isinstance(body, ChunkFailed):
        return "chunk_failed:retryable" if body.retryable else "chunk_failed:final"
    return event.kind


def evolve(state: RunState, event: RunEvent) -> RunState:
    """Apply one event. The state is updated in place and returned (O(1) per event, so that
    folding a run with thousands of chunks stays linear); a forbidden event becomes an Anomaly.
    Every fact counts once: an event delivered again (same id, same body) changes nothing,
    whether it was applied or refused the first time, so fold(h + h) == fold(h)."""
    if event.run_id != state.run_id:
        return _anomaly(state, event, f"event of run {event.run_id!r} folded into {state.run_id!r}")
    if event.body in state.refused.get(event.event_id, ()):
        return state  # refused before: a redelivery is not a second anomaly
    seen = state.applied.get(event.event_id)
    if seen is not None:
        if seen == event.body:
            return state  # the same fact delivered twice: applying it again changes nothing
        return _anomaly(state, event, "a different event with an already applied event_id")
    body = event.body
    outcome = body.status if isinstance(body, RunCompleted) else None
    new_status = next_run_status(state.status, run_trigger(event.kind, outcome))
    if new_status is None:
        return _anomaly(
            state,
            event,
            f"run is {state.status.value}: {run_trigger(event.kind, outcome)} is not allowed",
        )
    chunk: ChunkState | None = None
    new_chunk_status: ChunkStatus | None = None
    if isinstance(body, ChunkStarted | FileWritten | ChunkCompleted | ChunkFailed | RetryAttempted):
        chunk = state.chunks.get(body.chunk_index)
        if chunk is None:
            return _anomaly(state, event, f"chunk {body.chunk_index} is not in the plan")
        new_chunk_status = next_chunk_status(chunk.status, _chunk_trigger(event))
        if new_chunk_status is None:
            return _anomaly(
                state,
                event,
                f"chunk {chunk.index} is {chunk.status.value} (winning attempt "
                f"{chunk.winning_attempt}): {_chunk_trigger(event)} of attempt "
                f"{body.attempt} is fenced off",
            )

    state.applied[event.event_id] = body
    state.status = new_status
    state.last_event_at = event.occurred_at
    if state.export_name == "":
        state.export_name = event.export_name
    if event.resources is not None:
        state.peak_rss_mb = max(
            state.peak_rss_mb, event.resources.rss_mb_after, event.resources.rss_mb_before
        )

    match body:
        case RunScheduled():
            state.scheduled = body
            state.spec = body.spec
        case RunReady():
            state.ready = body
        case RunRequested():
            state.requested = body
            state.spec = body.spec
            state.requested_at = event.occurred_at
        case PlanResolved():
            state.plan = body
            state.chunks = {r.index: ChunkState(range=r) for r in body.chunks}
        case PlanWarning():
            state.plan_warnings.append(body)
        case ChunkStarted():
            assert chunk is not None and new_chunk_status is not None
            chunk.status = new_chunk_status
            if body.attempt >= chunk.attempt:
                chunk.priority = body.priority
            chunk.attempt = max(chunk.attempt, body.attempt)
            if chunk.started_at is None:
                chunk.started_at = event.occurred_at
            if state.started_at is None:
                state.started_at = event.occurred_at
        case FileWritten():
            assert chunk is not None and new_chunk_status is not None
            chunk.status = new_chunk_status
            chunk.files[(body.attempt, body.part_index)] = body
        case ChunkCompleted():
            assert chunk is not None and new_chunk_status is not None
            chunk.status = new_chunk_status
            chunk.winning_attempt = body.attempt  # the first completion wins
            chunk.rows = body.rows
            chunk.source_rows = body.source_rows if body.source_counted else None
            chunk.finished_at = event.occurred_at
        case ChunkFailed():
            assert chunk is not None and new_chunk_status is not None
            chunk.status = new_chunk_status
            chunk.error = body.error
            if new_chunk_status is ChunkStatus.FAILED:
                chunk.finished_at = event.occurred_at
        case RetryAttempted():
            assert chunk is not None and new_chunk_status is not None
            chunk.status = new_chunk_status
            state.retries += 1
        case QualityIssue():
            state.quality_issues.append(body)
        case SchemaChanged():
            state.schema_changes.append(body)
        case Warning():
            state.warnings.append(body)
        case ValidationResult():
            state.validation = body
        case ReconciliationResult():
            state.reconciliation = body
        case ManifestCommitted():
            state.manifest = body
        case RunCompleted():
            state.completion = body
            state.finished_at = event.occurred_at
            if body.status is RunStatus.CANCELED:
                for c in state.chunks.values():
                    c.status = next_chunk_status(c.status, "cancel") or c.status
        case CancelRequested():
            state.cancel = body
        case _:
            assert_never(body)
    return state


def fold(events: Iterable[RunEvent], run_id: str | None = None) -> RunState:
    """State of one run from its history, in stream order."""
    state: RunState | None = None if run_id is None else RunState(run_id=run_id)
    for event in events:
        if state is None:
            state = RunState(run_id=event.run_id)
        evolve(state, event)
    if state is None:
        raise ValueError("fold() needs a run_id or at least one event")
    return state
