"""Gate verdicts from observations: validation of the parts, reconciliation of the counts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from sluiceway.common.domain.events import (
    ChunkRange,
    FileWritten,
    PlanResolved,
    ReconciliationResult,
    ValidationFailure,
    ValidationResult,
)
from sluiceway.common.domain.run import RunState

PART_MISSING = "PART_MISSING"
SIZE_MISMATCH = "SIZE_MISMATCH"
FINGERPRINT_MISMATCH = "FINGERPRINT_MISMATCH"
PART_PATH_INVALID = "PART_PATH_INVALID"

# what was read back from the destination: file name -> (fingerprint, size), None if absent
Observed = Mapping[str, tuple[str, int] | None]


def safe_relative(file_name: str) -> bool:
    """A part path must stay inside the run directory."""
    p = PurePosixPath(file_name)
    return bool(file_name) and not p.is_absolute() and ".." not in p.parts


def validate_parts(files: list[FileWritten], observed: Observed) -> ValidationResult:
    failures: list[ValidationFailure] = []
    for f in files:
        if not safe_relative(f.file_name):
            failures.append(
                ValidationFailure(PART_PATH_INVALID, f.file_name, "path leaves the run directory")
            )
            continue
        seen = observed.get(f.file_name)
        if seen is None:
            failures.append(ValidationFailure(PART_MISSING, f.file_name, "file not found"))
            continue
        fingerprint, size = seen
        if size != f.bytes:
            failures.append(
                ValidationFailure(
                    SIZE_MISMATCH, f.file_name, f"{size} bytes on disk, {f.bytes} written"
                )
            )
        elif fingerprint != f.content_fingerprint:
            failures.append(
                ValidationFailure(
                    FINGERPRINT_MISMATCH,
                    f.file_name,
                    f"{fingerprint} on disk, {f.content_fingerprint} written",
                )
            )
    return ValidationResult(passed=not failures, failures=tuple(failures))


def count_ranges(plan: PlanResolved) -> tuple[ChunkRange | None, ...]:
    """The ranges whose COUNT(*) sum is the run's predicate: everything (full, or no key), else
    the whole key span plus the NULL-key chunk. Few queries whatever the chunk count."""
    if plan.strategy != "chunked":
        return (None,)
    out: list[ChunkRange | None] = []
    if plan.key_low and plan.key_high:
        out.append(ChunkRange(start_key=plan.key_low, end_key=plan.key_high, end_inclusive=True))
    out.extend(c for c in plan.chunks if c.null_keys)
    if not out:  # an empty table: its one chunk selects nothing
        out.extend(plan.chunks)
    return tuple(out)


def mismatched_chunks(state: RunState) -> list[int]:
    """Chunks whose written rows differ from their own snapshot COUNT(*)."""
    return [
        c.index
        for c in state.chunks.values()
        if c.source_rows is not None and c.source_rows != sum(f.rows for f in c.winning_files())
    ]


def snapshot_reconciliation(state: RunState) -> ReconciliationResult | None:
    """Reconciliation from the counts the workers took in each chunk's read transaction (the
    same predicate and snapshot as the rows they wrote), so the source is not scanned again.
    None when some chunk has no such count: then the committer counts at the source."""
    chunks = list(state.chunks.values())
    if not chunks or any(c.source_rows is None for c in chunks):
        return None
    source_count = sum(c.source_rows or 0 for c in chunks)
    result = reconcile(source_count, state.total_rows)
    if mismatched_chunks(state):
        return ReconciliationResult(result.source_count, result.exported_rows, matched=False)
    return result


def reconcile(source_count: int, exported_rows: int) -> ReconciliationResult:
    return ReconciliationResult(
        source_count=source_count,
        exported_rows=exported_rows,
        matched=source_count == exported_rows,
    )
