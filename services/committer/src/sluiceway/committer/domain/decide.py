"""What the committer does for a run, given its folded state: a pure decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sluiceway.committer.domain.gates import mismatched_chunks
from sluiceway.common.domain.events import (
    RunCompleted,
    RunStatus,
    Severity,
    Warning,
)
from sluiceway.common.domain.run import RunState


@dataclass(frozen=True)
class Nothing:
    reason: str


@dataclass(frozen=True)
class Fail:
    error_message: str


@dataclass(frozen=True)
class Commit:
    """Run the gates, write the manifest and _SUCCESS, append ManifestCommitted."""


@dataclass(frozen=True)
class Finish:
    """ManifestCommitted is in the log but RunCompleted is not (a crash in between)."""


Decision = Nothing | Fail | Commit | Finish


def decide(state: RunState) -> Decision:
    if state.requested is None:
        return Nothing("no RunRequested in the run's history")
    if state.terminal:
        return Nothing(f"run is {state.status.value}")
    if state.manifest is not None:
        return Finish()
    if state.plan is None:
        return Nothing("not planned yet")
    if state.cancel is not None:
        return Nothing("a cancel was requested: the planner ends the run")
    failed = sorted(state.failed_chunks(), key=lambda c: c.index)
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed chunk(s))" if len(failed) > 1 else ""
        return Fail(f"chunk {first.index} failed: {first.error or 'unknown error'}{more}")
    # a gate verdict already in the log decides again the same way after a restart
    if state.validation is not None and not state.validation.passed:
        return Fail(validation_message(state))
    if not state.quality_passed:
        return Fail(quality_message(state))
    if state.reconciliation is not None and not state.reconciliation.matched:
        r = state.reconciliation
        return Fail(
            reconciliation_message(r.source_count, r.exported_rows, mismatched_chunks(state))
        )
    if state.all_chunks_completed():
        return Commit()
    done = sum(1 for c in state.chunks.values() if c.status.value == "COMPLETED")
    return Nothing(f"{done}/{len(state.chunks)} chunk(s) completed")


def validation_message(state: RunState) -> str:
    failures = state.validation.failures if state.validation is not None else ()
    if not failures:
        return "validation failed"
    first = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"validation failed: {first.code} {first.part}: {first.message}{more}"


def reconciliation_message(source_count: int, exported_rows: int, chunks: list[int]) -> str:
    where = f" (chunks {', '.join(map(str, chunks))} differ)" if chunks else ""
    return (
        f"reconciliation failed: the source has {source_count} row(s), "
        f"the parts hold {exported_rows}{where}"
    )


def duration_ms(state: RunState, now: datetime) -> int:
    if state.requested_at is None:
        return 0
    return max(0, int((now - state.requested_at).total_seconds() * 1000))


def completed(state: RunState, status: RunStatus, now: datetime, error: str = "") -> RunCompleted:
    return RunCompleted(status=status, error_message=error, duration_ms=duration_ms(state, now))


SKIP_EMPTY_REASON = (
    "no row to export (skip_empty): nothing committed, the export's last commit stays its latest"
)


def skipped_empty(state: RunState, now: datetime) -> RunCompleted | None:
    """With skip_empty, a run that read no row, the source agreeing (its reconciliation
    matched), ends SKIPPED instead of committing an empty manifest; None otherwise."""
    spec = state.spec
    if spec is None or not spec.skip_empty or state.total_rows != 0:
        return None
    if state.reconciliation is None or not state.reconciliation.matched:
        return None
    return RunCompleted(
        status=RunStatus.SKIPPED, skip_reason=SKIP_EMPTY_REASON, duration_ms=duration_ms(state, now)
    )


def set_aside_warning(run_id: str, moved: list[str], shown: int = 5) -> Warning:
    """The Warning that files no manifest lists were moved to _quarantine/<run_id>/."""
    names = ", ".join(moved[:shown]) + (
        f" and {len(moved) - shown} more" if len(moved) > shown else ""
    )
    return Warning(
        context="quarantine",
        message=f"moved {len(moved)} file(s) no manifest lists to _quarantine/{run_id}/: {names}",
    )


def quality_message(state: RunState) -> str:
    failing = [q for q in state.quality_issues if q.severity is Severity.FAIL]
    if not failing:
        return "quality check failed"
    more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
    return f"quality check failed: {failing[0].rule}: {failing[0].message}{more}"


SHAPE_CONTEXT = "shape"
# below this many bytes a longer value is no change of shape worth a warning (1 -> 10 bytes)
MIN_SHAPE_BYTES = 64


def run_max_lengths(state: RunState) -> dict[str, int]:
    """Each string/binary column's longest value over the run's committed parts, in bytes."""
    out: dict[str, int] = {}
    for f in state.committed_files():
        for column, length in f.max_lengths.items():
            out[column] = max(length, out.get(column, 0))
    return out


def shape_warnings(
    ratio: int, now: dict[str, int], baseline: dict[str, int], baseline_run: str
) -> list[Warning]:
    """A Warning per string/binary column whose longest value grew `ratio`-fold or more since
    the export's last commit (`baseline`, of run `baseline_run`), and to MIN_SHAPE_BYTES at
    least; none with `ratio` 0 or no baseline."""
    if ratio <= 0:
        return []
    out = []
    for column in sorted(now):
        before, longest = baseline.get(column, 0), now[column]
        if before > 0 and longest >= ratio * before and longest >= MIN_SHAPE_BYTES:
            out.append(
                Warning(
                    context=SHAPE_CONTEXT,
                    message=(
                        f"column {column!r}: its longest value is {longest} bytes, "
                        f"{longest / before:.0f}x the {before} of run {baseline_run} "
                        f"(shape_drift_ratio {ratio})"
                    ),
                )
            )
    return out
