"""The transition tables of a run and of a chunk: the only place a status may change."""

from __future__ import annotations

from .events import ChunkStatus, RunStatus

R = RunStatus
C = ChunkStatus

TERMINAL_RUN: frozenset[RunStatus] = frozenset({R.SUCCEEDED, R.FAILED, R.CANCELED, R.SKIPPED})
TERMINAL_CHUNK: frozenset[ChunkStatus] = frozenset({C.COMPLETED, C.FAILED, C.CANCELED})

# Triggers are event kinds; a RunCompleted is keyed by its outcome ("completed:SUCCEEDED").
# UNSPECIFIED stands for "no event seen yet".
_ACTIVE = (R.SCHEDULED, R.READY, R.REQUESTED, R.PLANNING, R.RUNNING, R.COMMITTING)
# states of a run that has not been admitted yet (no RunRequested): cancelable, skippable
WAITING_RUN: frozenset[RunStatus] = frozenset({R.SCHEDULED, R.READY})
# admitted and not ended: the export's run in flight
IN_FLIGHT_RUN: frozenset[RunStatus] = frozenset({R.REQUESTED, R.PLANNING, R.RUNNING, R.COMMITTING})
_CHUNK_WORK = (
    "chunk_started",
    "file_written",
    "chunk_completed",
    "chunk_failed",
    "retry_attempted",
)
_GATES = ("quality_issue", "schema_changed", "validation_result", "reconciliation_result")

RUN_TRANSITIONS: dict[tuple[RunStatus, str], RunStatus] = {
    (R.UNSPECIFIED, "requested"): R.REQUESTED,
    # a scheduled occurrence: appended ahead of time, READY when its time comes, REQUESTED when
    # the export has no other run in flight; a missed tick or overlap "skip" ends it SKIPPED
    (R.UNSPECIFIED, "scheduled"): R.SCHEDULED,
    (R.SCHEDULED, "ready"): R.READY,
    (R.READY, "requested"): R.REQUESTED,
    (R.SCHEDULED, "completed:SKIPPED"): R.SKIPPED,
    (R.READY, "completed:SKIPPED"): R.SKIPPED,
    (R.REQUESTED, "plan_resolved"): R.PLANNING,
    (R.REQUESTED, "plan_warning"): R.REQUESTED,
    # schema drift is decided before the plan: with policy fail, no plan and no chunk at all
    (R.REQUESTED, "schema_changed"): R.REQUESTED,
    (R.PLANNING, "plan_warning"): R.PLANNING,
    (R.PLANNING, "schema_changed"): R.PLANNING,  # drift is checked before any chunk is read
    (R.PLANNING, "completed:SKIPPED"): R.SKIPPED,
    (R.PLANNING, "chunk_started"): R.RUNNING,
    **{(R.RUNNING, kind): R.RUNNING for kind in _CHUNK_WORK},
    **{(R.RUNNING, kind): R.COMMITTING for kind in _GATES},
    (R.RUNNING, "manifest_committed"): R.COMMITTING,
    **{(R.COMMITTING, kind): R.COMMITTING for kind in _GATES},
    (R.COMMITTING, "manifest_committed"): R.COMMITTING,
    (R.COMMITTING, "completed:SUCCEEDED"): R.SUCCEEDED,
    # skip_empty: the gates passed on zero rows, and nothing is committed
    (R.COMMITTING, "completed:SKIPPED"): R.SKIPPED,
    # late chunk facts of a losing attempt may still arrive while the run commits; the chunk
    # table decides whether they count (they do not: attempts are fenced)
    **{(R.COMMITTING, kind): R.COMMITTING for kind in _CHUNK_WORK},
    # a Warning changes no status; it may come after the end (a losing attempt set aside late)
    **{(s, "warning"): s for s in (*_ACTIVE, *TERMINAL_RUN)},
    **{(s, "cancel_requested"): s for s in _ACTIVE},
    **{(s, "completed:FAILED"): R.FAILED for s in _ACTIVE},
    **{(s, "completed:CANCELED"): R.CANCELED for s in _ACTIVE},
}

CHUNK_TRANSITIONS: dict[tuple[ChunkStatus, str], ChunkStatus] = {
    (C.PENDING, "chunk_started"): C.RUNNING,
    (C.RETRY_WAIT, "chunk_started"): C.RUNNING,
    # a redelivery after ack_wait expired: a second attempt runs beside the first
    (C.RUNNING, "chunk_started"): C.RUNNING,
    (C.RUNNING, "file_written"): C.RUNNING,
    (C.RUNNING, "chunk_completed"): C.COMPLETED,
    (C.RUNNING, "chunk_failed:retryable"): C.RETRY_WAIT,
    (C.RUNNING, "chunk_failed:final"): C.FAILED,
    (C.RETRY_WAIT, "chunk_failed:final"): C.FAILED,
    (C.RETRY_WAIT, "retry_attempted"): C.RETRY_WAIT,
    (C.RUNNING, "retry_attempted"): C.RETRY_WAIT,
    **{(s, "cancel"): C.CANCELED for s in (C.PENDING, C.RUNNING, C.RETRY_WAIT)},
}


def run_trigger(kind: str, outcome: RunStatus | None = None) -> str:
    return f"{kind}:{outcome.value}" if outcome is not None else kind


def next_run_status(status: RunStatus, trigger: str) -> RunStatus | None:
    """The status after `trigger`, or None when the table forbids it."""
    return RUN_TRANSITIONS.get((status, trigger))


def next_chunk_status(status: ChunkStatus, trigger: str) -> ChunkStatus | None:
    return CHUNK_TRANSITIONS.get((status, trigger))
