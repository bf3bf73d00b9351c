"""Gate verdicts from observations: validation of the parts, reconciliation of the counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sluiceway.common.domain import verify
from sluiceway.common.domain.events import (
    CHUNK_BY_PAGES,
    ChunkRange,
    FileWritten,
    PlanResolved,
    QualityIssue,
    QualityRules,
    ReconciliationResult,
    Severity,
    ValidationResult,
)
from sluiceway.common.domain.run import RunState

# one vocabulary with `sluiceway validate` (sluiceway.common.domain.verify)
PART_MISSING = verify.PART_MISSING
SIZE_MISMATCH = verify.SIZE_MISMATCH
FINGERPRINT_MISMATCH = verify.FINGERPRINT_MISMATCH
PART_PATH_INVALID = verify.PART_PATH_INVALID
safe_relative = verify.safe_relative

# what was read back from the destination: file name -> (fingerprint, size), None if absent
Observed = Mapping[str, tuple[str, int] | None]


def validate_parts(files: list[FileWritten], observed: Observed) -> ValidationResult:
    """The written files against the bytes read back (rows are not read here: the worker
    counted them as it wrote, and `sluiceway validate` reads them back from the footers)."""
    claims = [
        verify.PartClaim(
            path=f.file_name,
            rows=f.rows,
            size_bytes=f.bytes,
            content_fingerprint=f.content_fingerprint,
        )
        for f in files
    ]
    seen = {
        name: None if o is None else verify.PartSeen(fingerprint=o[0], size=o[1])
        for name, o in observed.items()
    }
    return verify.result(verify.check_parts(claims, seen))


def count_ranges(plan: PlanResolved) -> tuple[ChunkRange | None, ...]:
    """The ranges whose COUNT(*) sum is the run's predicate: everything (full, or no key), else
    the whole key span plus the NULL-key chunk. Few queries whatever the chunk count."""
    if plan.strategy != "chunked" or plan.chunk_by == CHUNK_BY_PAGES:
        return (None,)  # page ranges cover the whole table
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


# ---- quality rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityObserved:
    """What the parts hold, for the quality rules: rows, NULLs and repeated values per column."""

    rows: int
    nulls: Mapping[str, int]
    duplicates: Mapping[str, int]


def quality_columns(rules: QualityRules) -> tuple[list[str], list[str]]:
    """The columns to count NULLs of, and those to count repeated values of."""
    return sorted(rules.null_ratio_max), sorted(set(rules.unique_columns))


def quality_issues(rules: QualityRules, seen: QualityObserved) -> list[QualityIssue]:
    """One QualityIssue per broken rule, FAIL unless the rules say `on_violation: warn`."""
    severity = Severity.WARN if rules.on_violation == "warn" else Severity.FAIL
    out: list[QualityIssue] = []
    if rules.row_count_min and seen.rows < rules.row_count_min:
        out.append(
            QualityIssue(
                severity,
                "row_count_min",
                f"{seen.rows} row(s), at least {rules.row_count_min} required",
            )
        )
    if rules.row_count_max and seen.rows > rules.row_count_max:
        out.append(
            QualityIssue(
                severity,
                "row_count_max",
                f"{seen.rows} row(s), at most {rules.row_count_max} allowed",
            )
        )
    for column, limit in sorted(rules.null_ratio_max.items()):
        ratio = seen.nulls[column] / seen.rows if seen.rows else 0.0
        if ratio > limit:
            out.append(
                QualityIssue(
                    severity,
                    "null_ratio_max",
                    f"column {column!r}: {ratio:.4%} of rows are NULL, at most {limit:.4%}",
                )
            )
    for column in sorted(set(rules.unique_columns)):
        if seen.duplicates[column]:
            out.append(
                QualityIssue(
                    severity,
                    "unique_columns",
                    f"column {column!r}: {seen.duplicates[column]} repeated value(s)",
                )
            )
    return out
