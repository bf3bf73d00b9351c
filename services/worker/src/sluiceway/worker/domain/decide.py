"""Deciding a chunk task's fate from its attempt number, its budget and the error, purely.

No clock is needed: the backoff is a deterministic function of the attempt (no jitter), so a
replay of the same history always makes the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sluiceway.common.domain.events import (
    ChunkCompleted,
    ChunkFailed,
    ChunkStarted,
    ChunkTask,
    FileWritten,
    RetryAttempted,
)

BASE_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 60_000
DEFAULT_MAX_ATTEMPTS = 3


def backoff_ms(
    attempt: int, *, base_ms: int = BASE_BACKOFF_MS, cap_ms: int = MAX_BACKOFF_MS
) -> int:
    """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped; attempt counts from 1."""
    if attempt < 1:
        attempt = 1
    exponent = min(attempt - 1, 32)  # 2**32 * base already exceeds any sane cap
    return int(min(cap_ms, base_ms * (2**exponent)))


def next_attempt(delivered: int, last_started: int | None) -> int:
    """The attempt number to claim: the delivery count, or one past the last attempt the log
    shows started, whichever is higher (a crashed server may hand a task out again with a
    delivery count it has already used)."""
    return max(delivered, 1, (last_started or 0) + 1)


def attempt_budget(spec_max_attempts: int, consumer_max_deliver: int) -> int:
    """The export's budget, never above what the shared consumer will redeliver."""
    budget = spec_max_attempts if spec_max_attempts > 0 else DEFAULT_MAX_ATTEMPTS
    if consumer_max_deliver > 0:
        budget = min(budget, consumer_max_deliver)
    return max(budget, 1)


class Stopped(Exception):
    """Raised by the reader at a batch boundary when it was asked to stop (the run ended)."""


# ---- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Read the range: this delivery is within the budget."""

    started: ChunkStarted


@dataclass(frozen=True)
class Retry:
    """Record the failure, announce the next attempt, and nak with this delay."""

    failed: ChunkFailed
    retry: RetryAttempted
    backoff_ms: int


@dataclass(frozen=True)
class Fail:
    """The chunk has failed for good: record it and terminate the task."""

    failed: ChunkFailed


@dataclass(frozen=True)
class Complete:
    """Every part is on disk: record each file, then the completion, then ack."""

    files: tuple[FileWritten, ...]
    completed: ChunkCompleted


def decide_on_delivery(
    task: ChunkTask, attempt: int, max_attempts: int, *, priority: int = 0
) -> Run | Fail:
    """A delivery beyond the budget (the previous attempt died without settling the task, e.g.
    a crash before nak) is failed without reading. `priority` is the effective priority the
    task was taken with (recorded on ChunkStarted)."""
    if attempt > max_attempts:
        return Fail(
            ChunkFailed(
                chunk_index=task.range.index,
                error=f"attempt budget of {max_attempts} spent: delivery {attempt} not run "
                "(an earlier attempt ended without settling the task)",
                attempt=attempt,
                retryable=False,
            )
        )
    return Run(
        ChunkStarted(
            chunk_index=task.range.index,
            start_key=task.range.start_key,
            end_key=task.range.end_key,
            attempt=attempt,
            priority=priority,
        )
    )


def decide_on_error(
    chunk_index: int,
    attempt: int,
    max_attempts: int,
    retryable: bool,
    error: str,
    *,
    base_ms: int = BASE_BACKOFF_MS,
    cap_ms: int = MAX_BACKOFF_MS,
) -> Retry | Fail:
    """Retry a retryable error while attempts remain; otherwise fail for good. `error` must be
    redacted already."""
    if retryable and attempt < max_attempts:
        delay = backoff_ms(attempt, base_ms=base_ms, cap_ms=cap_ms)
        return Retry(
            failed=ChunkFailed(
                chunk_index=chunk_index, error=error, attempt=attempt, retryable=True
            ),
            retry=RetryAttempted(
                attempt=attempt + 1, reason=error, backoff_ms=delay, chunk_index=chunk_index
            ),
            backoff_ms=delay,
        )
    message = f"attempt budget of {max_attempts} spent: {error}" if retryable else error
    return Fail(
        ChunkFailed(chunk_index=chunk_index, error=message, attempt=attempt, retryable=False)
    )


@dataclass(frozen=True)
class Part:
    """A part file on disk, as the part writer reports it (kept free of pyarrow)."""

    file_name: str
    rows: int
    bytes: int
    part_index: int
    content_fingerprint: str
    opened_ns: int = 0  # when the writer opened it (wall clock, ns): the start of its span
    column_checksums: Mapping[str, str] = field(default_factory=dict)
    max_lengths: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkExport:
    """What reading one chunk produced: its parts and the range's snapshot COUNT(*)."""

    parts: tuple[Part, ...]
    source_rows: int | None = None


def decide_on_success(
    chunk_index: int, attempt: int, parts: tuple[Part, ...], source_rows: int | None = None
) -> Complete:
    """FileWritten per part, then ChunkCompleted; `source_rows` is the range's COUNT(*) taken
    in the read's own snapshot (None when the source could not take one)."""
    files = tuple(
        FileWritten(
            file_name=p.file_name,
            rows=p.rows,
            bytes=p.bytes,
            part_index=p.part_index,
            chunk_index=chunk_index,
            attempt=attempt,
            content_fingerprint=p.content_fingerprint,
            column_checksums=dict(p.column_checksums),
            max_lengths=dict(p.max_lengths),
        )
        for p in sorted(parts, key=lambda p: p.part_index)
    )
    return Complete(
        files=files,
        completed=ChunkCompleted(
            chunk_index=chunk_index,
            rows=sum(p.rows for p in parts),
            files=len(files),
            attempt=attempt,
            source_rows=source_rows or 0,
            source_counted=source_rows is not None,
        ),
    )
