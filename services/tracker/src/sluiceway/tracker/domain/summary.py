"""RunState -> the RunSummary fields, and one human line per event: pure, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import RunState
from sluiceway.common.domain.schedule import waiting_reason


@dataclass(frozen=True)
class Summary:
    """Every RunSummary field except the journal (apply_context flattened)."""

    run_id: str
    export_name: str = ""
    status: str = ev.RunStatus.UNSPECIFIED.value
    total_rows: int = 0
    files_produced: int = 0
    bytes_written: int = 0
    files_committed: int = 0
    duration_ms: int = 0
    peak_rss_mb: float = 0.0
    retries: int = 0
    validated: bool = False
    schema_changed: bool = False
    quality_passed: bool = True
    error_message: str = ""
    tuning_profile: str = ""
    batch_size: int = 0
    batch_size_memory_mb: int = 0
    format: str = ""
    mode: str = ""
    compression: str = ""
    pg_temp_bytes_delta: int = 0
    skip_reason: str = ""
    source_count: int = 0
    reconciled: bool = False
    manifest_parts: int = 0
    schema_fingerprint: str = ""
    manifest_verification: str = ""
    apply_plan_id: str = ""
    apply_force: bool = False
    apply_bypassed: tuple[str, ...] = field(default_factory=tuple)
    plan_id: str = ""
    manifest_uri: str = ""
    requested_at: datetime | None = None
    finished_at: datetime | None = None
    chunks_total: int = 0
    chunks_completed: int = 0
    chunks_failed: int = 0
    row_estimate: int = 0
    last_seq: int = 0
    anomalies: int = 0
    manifest_fingerprint: str = ""
    failure_cause: str = ""
    scheduled_at: datetime | None = None
    priority: int = 0
    waiting_reason: str = ""
    owner: str = ""
    team: str = ""


# RunSummary.failure_cause: why a FAILED run failed (stable values, see tracker.proto)
CAUSE_PLANNING = "planning"
CAUSE_SCHEMA_DRIFT = "schema_drift"
CAUSE_CHUNK = "chunk"
CAUSE_CHUNK_RETRIES_SPENT = "chunk_retries_spent"
CAUSE_VALIDATION = "validation"
CAUSE_QUALITY = "quality"
CAUSE_RECONCILIATION = "reconciliation"
CAUSE_EXPIRED = "expired"
CAUSE_OTHER = "other"

# The worker's final ChunkFailed is never `retryable` (the chunk is FAILED for good); when it
# failed because the attempt budget ran out on retryable errors, its error says so with this
# prefix (sluiceway.worker.domain.decide; tests/unit/test_cli_exit_codes.py pins the two).
RETRIES_SPENT_PREFIX = "attempt budget of "


def failure_cause(state: RunState) -> str:
    """The first cause in the order the services decide: planning, the schema gate, a failed
    chunk (the committer fails the run on it before any gate), validation, reconciliation."""
    if state.status is not ev.RunStatus.FAILED:
        return ""
    if state.completion is not None and state.completion.error_message.startswith(ev.EXPIRED):
        return CAUSE_EXPIRED
    drift = any(c.added or c.removed or c.type_changed for c in state.schema_changes)
    if drift and state.started_at is None:  # drift is checked before the plan, so no chunk ran
        return CAUSE_SCHEMA_DRIFT
    if state.plan is None:
        return CAUSE_PLANNING
    failed = state.failed_chunks()
    if failed:
        if all(c.error.startswith(RETRIES_SPENT_PREFIX) for c in failed):
            return CAUSE_CHUNK_RETRIES_SPENT
        return CAUSE_CHUNK
    if state.validation is not None and not state.validation.passed:
        return CAUSE_VALIDATION
    if not state.quality_passed:
        return CAUSE_QUALITY
    if state.reconciliation is not None and not state.reconciliation.matched:
        return CAUSE_RECONCILIATION
    return CAUSE_OTHER


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _duration_ms(state: RunState) -> int:
    if state.completion is not None and state.completion.duration_ms:
        return state.completion.duration_ms
    if state.requested_at is None or state.last_event_at is None:
        return 0
    end = state.finished_at or state.last_event_at
    return max(0, int((end - state.requested_at).total_seconds() * 1000))


def _verification(state: RunState) -> str:
    if state.validation is None:
        return ""
    if not state.validation.passed:
        return "failed"
    return "verified" if state.manifest is not None else ""


def _temp_bytes_delta(state: RunState) -> int:
    """pg_stat_database.temp_bytes at commit minus at plan: temporary-file bytes written in the
    source database during the run, by every session (other clients' too on a busy server).
    0 when either end is unknown (no commit, not PostgreSQL) or the statistics were reset."""
    start = state.plan.temp_bytes_at_plan if state.plan else None
    end = state.manifest.temp_bytes_at_end if state.manifest else None
    if start is None or end is None:
        return 0
    return max(0, end - start)


def summarize(state: RunState, last_seq: int = 0) -> Summary:
    """The read model's row for one run; `last_seq` is the stream seq of its latest event."""
    spec = state.spec or ev.ExportSpec()
    plan = state.plan
    requested = state.requested
    options = requested.options if requested is not None else {}
    all_files = state.all_files()
    committed = state.committed_files()
    completion = state.completion
    chunks = state.chunks.values()
    return Summary(
        run_id=state.run_id,
        export_name=state.export_name or spec.name,
        status=state.status.value,
        total_rows=state.total_rows,
        files_produced=len(all_files),
        bytes_written=sum(f.bytes for f in all_files),
        files_committed=len(committed),
        duration_ms=_duration_ms(state),
        peak_rss_mb=state.peak_rss_mb,
        retries=state.retries,
        validated=bool(state.validation is not None and state.validation.passed),
        schema_changed=any(c.added or c.removed or c.type_changed for c in state.schema_changes),
        quality_passed=state.quality_passed,
        error_message=completion.error_message if completion is not None else "",
        tuning_profile=plan.tuning_profile if plan else "",
        batch_size=(plan.batch_size if plan and plan.batch_size else spec.batch_size),
        batch_size_memory_mb=plan.batch_size_memory_mb if plan else 0,
        format=(plan.format if plan and plan.format else spec.format),
        mode=spec.mode,
        compression=(plan.compression if plan and plan.compression else spec.compression),
        pg_temp_bytes_delta=_temp_bytes_delta(state),
        skip_reason=completion.skip_reason if completion is not None else "",
        source_count=state.reconciliation.source_count if state.reconciliation else 0,
        reconciled=bool(state.reconciliation and state.reconciliation.matched),
        manifest_parts=state.manifest.part_count if state.manifest else 0,
        schema_fingerprint=plan.schema_fingerprint if plan else "",
        manifest_verification=_verification(state),
        apply_plan_id=requested.plan_id if requested else "",
        apply_force=_truthy(options.get("force", "")),
        apply_bypassed=tuple(
            sorted(b.strip() for b in options.get("bypass", "").split(",") if b.strip())
        ),
        plan_id=(
            plan.plan_id if plan and plan.plan_id else (requested.plan_id if requested else "")
        ),
        manifest_uri=state.manifest.manifest_uri if state.manifest else "",
        requested_at=state.requested_at,
        finished_at=state.finished_at,
        chunks_total=len(state.chunks),
        chunks_completed=sum(c.status is ev.ChunkStatus.COMPLETED for c in chunks),
        chunks_failed=sum(c.status is ev.ChunkStatus.FAILED for c in chunks),
        row_estimate=plan.row_estimate if plan else 0,
        last_seq=last_seq,
        anomalies=len(state.anomalies),
        manifest_fingerprint=state.manifest.fingerprint if state.manifest else "",
        failure_cause=failure_cause(state),
        scheduled_at=state.scheduled_at,
        priority=state.priority,
        waiting_reason=waiting_reason(state),
        owner=state.owner.principal,
        team=state.owner.team,
    )


def journal_message(event: ev.RunEvent) -> str:
    """A short line for humans. Never rows, keys of rows or secrets: counts and names only."""
    b = event.body
    match b:
        case ev.RunRequested():
            who = f" by {b.requested_by}" if b.requested_by else ""
            return f"run of export {b.spec.name or event.export_name!r} requested{who}"
        case ev.PlanResolved():
            return (
                f"plan {b.plan_id or '-'}: {len(b.chunks)} chunk(s), {b.format or '?'}"
                f"/{b.compression or '?'}, ~{b.row_estimate} rows"
            )
        case ev.PlanWarning():
            return f"plan warning {b.rule}: {b.message}"
        case ev.ChunkStarted():
            return f"chunk {b.chunk_index} started (attempt {b.attempt})"
        case ev.FileWritten():
            return (
                f"chunk {b.chunk_index} wrote {b.file_name} ({b.rows} rows, {b.bytes} bytes, "
                f"attempt {b.attempt})"
            )
        case ev.ChunkCompleted():
            return (
                f"chunk {b.chunk_index} completed: {b.rows} rows in {b.files} file(s) "
                f"(attempt {b.attempt})"
            )
        case ev.ChunkFailed():
            final = "" if b.retryable else " for good"
            return f"chunk {b.chunk_index} failed{final} (attempt {b.attempt}): {b.error}"
        case ev.RetryAttempted():
            return f"chunk {b.chunk_index} retry: attempt {b.attempt} in {b.backoff_ms} ms"
        case ev.QualityIssue():
            return f"quality {b.severity.value.lower()} {b.rule}: {b.message}"
        case ev.SchemaChanged():
            return f"schema changed: +{len(b.added)} -{len(b.removed)} ~{len(b.type_changed)}"
        case ev.Warning():
            return f"warning ({b.context}): {b.message}"
        case ev.ValidationResult():
            if b.passed:
                return "validation passed"
            return f"validation failed: {', '.join(f.code for f in b.failures) or 'no detail'}"
        case ev.ReconciliationResult():
            verdict = "matched" if b.matched else "mismatch"
            return f"reconciliation {verdict}: source {b.source_count}, exported {b.exported_rows}"
        case ev.ManifestCommitted():
            return f"manifest committed: {b.part_count} part(s), {b.row_count} rows"
        case ev.RunCompleted():
            detail = b.error_message or b.skip_reason
            return f"run {b.status.value.lower()}" + (f": {detail}" if detail else "")
        case ev.CancelRequested():
            return f"cancel requested: {b.reason}" if b.reason else "cancel requested"
        case ev.RunScheduled():
            at = b.scheduled_at.isoformat() if b.scheduled_at else "?"
            return f"scheduled for {at} ({b.cron} {b.timezone}, priority {b.priority})"
        case ev.RunReady():
            waiting = f", waiting for run {b.waiting_for}" if b.waiting_for else ""
            return f"ready: {b.reason}{waiting}"
    return event.kind
