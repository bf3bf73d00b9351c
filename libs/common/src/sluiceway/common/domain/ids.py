"""Deterministic identifiers: event ids (the Nats-Msg-Id), run ids and subjects' tokens."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from .events import (
    Body,
    ChunkCompleted,
    ChunkFailed,
    ChunkStarted,
    FileWritten,
    PlanWarning,
    Producer,
    QualityIssue,
    ResourceUsage,
    RetryAttempted,
    RunEvent,
    Warning,
    kind_of,
)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidRunId(ValueError):
    pass


def check_run_id(run_id: str) -> str:
    """A run id is one subject token: letters, digits, '-' and '_' only."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise InvalidRunId(f"run_id {run_id!r} is invalid: use 1-64 letters, digits, '-' or '_'")
    return run_id


def new_run_id(now: datetime, entropy: bytes) -> str:
    """Sortable by time, unique by entropy: 20261122T093700Z-1a2b3c4d."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{entropy.hex()[:8]}"


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=6).hexdigest()


def scheduled_run_id(export_name: str, scheduled_at: datetime) -> str:
    """The run id of one occurrence of an export's schedule, the same on every replica:
    20261203T020000Z-s<10 hex of the export name>. `scheduled_at` must be aware (it is
    written in UTC); sortable by time like new_run_id, and one subject token."""
    if scheduled_at.tzinfo is None:
        raise ValueError("scheduled_at must be timezone-aware")
    when = scheduled_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{when}-s{_digest(export_name)[:10]}"


def new_event(
    run_id: str,
    export_name: str,
    body: Body,
    *,
    producer: Producer,
    now: datetime,
    attempt: int = 0,
    resources: ResourceUsage | None = None,
) -> RunEvent:
    """The envelope of a fact about to be appended, with its deterministic id."""
    return RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name=export_name,
        occurred_at=now,
        body=body,
        producer=producer,
        attempt=attempt,
        resources=resources,
    )


def event_id(run_id: str, body: Body) -> str:
    """The same fact always gets the same id, so a retried publish is deduplicated by the stream."""
    kind = kind_of(body)
    match body:
        case ChunkStarted() | ChunkCompleted() | ChunkFailed():
            return f"{run_id}/{kind}/{body.chunk_index}/{body.attempt}"
        case FileWritten():
            return f"{run_id}/{kind}/{body.chunk_index}/{body.attempt}/{body.part_index}"
        case RetryAttempted():
            return f"{run_id}/{kind}/{body.chunk_index}/{body.attempt}"
        case PlanWarning():
            return f"{run_id}/{kind}/{_digest(body.rule, body.message)}"
        case QualityIssue():
            return f"{run_id}/{kind}/{_digest(body.severity, body.rule, body.message)}"
        case Warning():
            return f"{run_id}/{kind}/{_digest(body.context, body.message)}"
        case _:
            return f"{run_id}/{kind}"
