"""Plans and planner decisions: what to append and publish for a run, given its folded state."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sluiceway.common import fileopts, fingerprint
from sluiceway.common.domain.events import (
    CHUNK_BY_KEYS,
    CHUNK_BY_PAGES,
    ChunkStatus,
    ChunkTask,
    ExportSpec,
    ManifestCommitted,
    PlanResolved,
    PlanWarning,
    RowFilter,
    RunCompleted,
    RunRequested,
    RunStatus,
    SchemaChanged,
    SchemaField,
    Warning,
    cursor_name,
    is_chunked,
)
from sluiceway.common.domain.lifecycle import WAITING_RUN
from sluiceway.common.domain.run import RunState
from sluiceway.common.sources.base import Introspection

from .chunks import (
    DATE,
    TIMESTAMP,
    TIMESTAMPTZ,
    PlanError,
    chunk_count_requested_exceeds_keys,
    is_integer_type,
    plan_chunks,
    plan_key_chunks,
    plan_page_chunks,
    temporal_kind,
)

TUNING_PROFILE = "balanced"  # a spec that never went through config.check_spec


def plan_id_of(plan: PlanResolved) -> str:
    """Deterministic id of a plan's content (not of the run, and not of the row estimate, which
    drifts with table statistics): a PlanRun dry run and the SubmitRun that follows it give the
    same id while the source's shape and key bounds are unchanged, so RunRequested.plan_id can
    pin a reviewed plan."""
    content = dataclasses.asdict(
        dataclasses.replace(
            plan, plan_id="", row_estimate=0, temp_bytes_at_plan=None, snapshot_id=""
        )
    )
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return "plan-" + fingerprint.of_bytes(text.encode()).removeprefix("xxh3:")


def build_plan(spec: ExportSpec, intro: Introspection) -> tuple[PlanResolved, list[PlanWarning]]:
    """The plan of `spec` over a source that introspected as `intro`. Raises PlanError."""
    if not intro.schema:
        raise PlanError("the source has no columns to export")
    if spec.columns:
        known = {f.name for f in intro.schema}
        missing = [c for c in spec.columns if c not in known]
        if missing:
            raise PlanError(f"unknown column(s): {', '.join(missing)}")
    warnings: list[PlanWarning] = []
    key_column, key_kind = "", ""
    chunked = is_chunked(spec)
    pages = spec.chunk_by == CHUNK_BY_PAGES
    keys = spec.chunk_by == CHUNK_BY_KEYS
    if chunked and not pages and not keys:
        key_column = spec.chunk_column or primary_key_column(spec, intro)
        # with a column projection the chunk key may be read without being exported
        if not spec.columns and key_column not in {f.name for f in intro.schema}:
            raise PlanError(f"chunk_column {key_column!r} is not a column of the source")
        if spec.chunk_by_days > 0:
            key_kind = temporal_kind(intro.key_type) or ""
            if not key_kind:
                raise PlanError(
                    f"chunk_by_days needs a date or timestamp chunk_column: {key_column!r} "
                    f"is {intro.key_type or 'of an unknown type'}"
                )
        if chunk_count_requested_exceeds_keys(spec.chunk_count, intro.key_low, intro.key_high):
            warnings.append(
                PlanWarning(
                    rule="chunk_count_reduced",
                    message=f"chunk_count {spec.chunk_count} exceeds the key span "
                    f"[{intro.key_low}, {intro.key_high}]: one chunk per key instead",
                )
            )
    key_low, key_high = (intro.key_low or "", intro.key_high or "") if chunked else ("", "")
    if keys:
        chunks = plan_key_chunks(intro.key_boundaries)
        key_low, key_high = "", ""
    elif pages:
        chunks = plan_page_chunks(
            intro.pages,
            block_size=intro.block_size,
            chunk_mb=spec.chunk_mb,
            chunk_count=spec.chunk_count,
        )
        key_low, key_high = "0", str(intro.pages)  # the heap's blocks when planned
    else:
        chunks = plan_chunks(
            "chunked" if chunked else spec.mode,
            key_low=intro.key_low if chunked else None,
            key_high=intro.key_high if chunked else None,
            chunk_size=spec.chunk_size,
            chunk_count=spec.chunk_count,
            chunk_by_days=spec.chunk_by_days,
            key_kind=key_kind,
            null_keys=chunked and intro.key_nullable,
        )
    schema = intro.schema
    # the worker adds them to every row; listed in the plan, so the manifest's schema has them
    added = fileopts.added_fields(spec)
    names = {f.name for f in schema}
    for f in added:
        if f.name in names:
            option = "row_hash" if f.name == fileopts.ROW_HASH else "add_exported_at"
            raise PlanError(f"{option}: the source already has a column {f.name!r}")
    missing = [c for c in spec.row_hash_columns if c not in names]
    if missing:
        raise PlanError(f"row_hash: no column {', '.join(map(repr, missing))} in the export")
    schema = (*schema, *added)
    if spec.partition_column:
        partition_problem(spec, schema)
    if spec.quality is not None:
        names = {f.name for f in schema}
        unknown = sorted(
            c
            for c in (*spec.quality.null_ratio_max, *spec.quality.unique_columns)
            if c not in names
        )
        if unknown:
            raise PlanError(f"quality: unknown column(s) {', '.join(unknown)}")
    plan = PlanResolved(
        strategy=spec.mode,
        chunks=chunks,
        format=spec.format,
        compression=spec.compression,
        compression_level=spec.compression_level,
        batch_size=spec.batch_size,
        batch_size_memory_mb=spec.batch_size_memory_mb,
        tuning_profile=spec.tuning_profile or TUNING_PROFILE,
        schema=schema,
        schema_fingerprint=fingerprint.of_schema(schema),
        row_estimate=intro.row_estimate,
        chunk_column=key_column,
        key_low=key_low,
        key_high=key_high,
        source_engine=spec.source.engine,
        source_table=spec.table,
        query_fingerprint=fingerprint.of_bytes(spec.query.encode()) if spec.query else "",
        row_filter=spec.row_filter,
        temp_bytes_at_plan=intro.temp_bytes,
        snapshot_id=intro.snapshot_id,
        chunk_by=spec.chunk_by,
        key_columns=tuple(f.name for f in intro.key_fields) if keys else (),
    )
    return dataclasses.replace(plan, plan_id=plan_id_of(plan)), warnings


def key_fields(spec: ExportSpec, intro: Introspection) -> tuple[SchemaField, ...]:
    """chunk_by keys: the key columns (chunk_columns, else the table's primary key), which
    must all be NOT NULL (a NULL has no place in a tuple order: its row would be in no range)
    and of a type with a total order the server and the bounds agree on."""
    if spec.chunk_columns:
        by_name = {f.name: f for f in (*intro.primary_key, *intro.schema)}
        missing = [c for c in spec.chunk_columns if c not in by_name]
        if missing:
            raise PlanError(f"chunk_columns: no column {', '.join(map(repr, missing))}")
        fields = tuple(by_name[c] for c in spec.chunk_columns)
    elif intro.primary_key:
        fields = intro.primary_key
    else:
        where = f"table {spec.table!r}" if spec.table else "a query"
        raise PlanError(f"chunk_by keys: {where} has no primary key; set chunk_columns")
    for f in fields:
        if f.nullable:
            raise PlanError(
                f"chunk_by keys: {f.name!r} may be NULL, and a row with a NULL key would be in "
                "no range; choose NOT NULL columns (chunk_columns)"
            )
        if f.type in ("float", "double", "halffloat") or f.type.startswith(("binary", "list")):
            raise PlanError(
                f"chunk_by keys: {f.name!r} is {f.type}, which cannot bound a key range "
                "exactly; choose other columns (chunk_columns)"
            )
    return fields


def key_every(spec: ExportSpec, rows: int) -> int:
    """chunk_by keys: rows per chunk (chunk_size, or `rows` over chunk_count)."""
    if spec.chunk_size > 0:
        return spec.chunk_size
    return max(1, -(-max(rows, 1) // max(spec.chunk_count, 1)))


def primary_key_column(spec: ExportSpec, intro: Introspection) -> str:
    """The chunk column of a chunked `table:` export that names none: its single-column
    integer primary key. Anything else is a planning error that says what to set."""
    pk = intro.primary_key
    if len(pk) == 1 and is_integer_type(pk[0].type):
        return pk[0].name
    if not pk:
        found = "has no primary key"
    elif len(pk) > 1:
        found = f"has a composite primary key ({', '.join(f.name for f in pk)})"
    else:
        found = f"has a primary key {pk[0].name!r} of type {pk[0].type}, not an integer"
    where = f"table {spec.table!r}" if spec.table else "a query"
    raise PlanError(
        f"export {spec.name!r}: chunked mode without chunk_column needs a single-column integer "
        f"primary key, and {where} {found}: set chunk_column"
    )


def check_pinned_plan(requested_plan_id: str, plan: PlanResolved) -> None:
    """A run submitted with a reviewed plan's id runs only if the source still plans the same."""
    if requested_plan_id and requested_plan_id != plan.plan_id:
        raise PlanError(
            f"the source changed since plan {requested_plan_id} was made (it now plans as "
            f"{plan.plan_id}): review the plan again"
        )


# ---- applied plans (`sluiceway apply`): RunRequested.options carry the sealed plan's facts ----


def applied_cursor(options: Mapping[str, str]) -> tuple[str, str] | None:
    """The sealed cursor snapshot (low, high) of an applied incremental plan, if any."""
    if "cursor_low" not in options and "cursor_high" not in options:
        return None
    return options.get("cursor_low", ""), options.get("cursor_high", "")


def bypassed(options: Mapping[str, str]) -> frozenset[str]:
    return frozenset(b.strip() for b in options.get("bypass", "").split(",") if b.strip())


def pinned_high(after: RowFilter, options: Mapping[str, str]) -> str:
    """An applied plan whose cursor has not moved reads exactly its sealed range: the high end
    is the sealed one, not today's maximum (rows that arrived since are the next run's), so a
    live table does not make the plan differ. "" = not pinned: bound at the maximum now."""
    cursor = applied_cursor(options)
    if cursor is None or cursor[0] != after.low:
        return ""
    return cursor[1]


def check_applied_plan(requested: RunRequested, plan: PlanResolved) -> None:
    """check_pinned_plan for a run with a pinned plan_id. One relaxation: when the export's
    cursor moved since the plan was sealed and the apply was forced past it (bypass
    cursor_moved), the run reads from the current cursor, and the plan must match the sealed
    one in everything but its row filter (nothing left to read: the run skips)."""
    pinned = requested.plan_id
    if not pinned or pinned == plan.plan_id:
        return
    cursor = applied_cursor(requested.options)
    rf = plan.row_filter
    if cursor is not None and rf is not None and rf.low != cursor[0]:
        if "cursor_moved" not in bypassed(requested.options):
            raise PlanError(
                f"the export's cursor moved since plan {pinned} was made (planned after "
                f"{cursor[0] or '(start)'}, now after {rf.low or '(start)'}): plan again"
            )
        if not plan.chunks:
            return  # a skip plan: nothing after the current cursor
        sealed = dataclasses.replace(rf, low=cursor[0], high=cursor[1])
        if plan_id_of(dataclasses.replace(plan, row_filter=sealed)) == pinned:
            return
    check_pinned_plan(pinned, plan)


# ---- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ignore:
    """Nothing to do: the run is terminal, or unknown (no RunRequested folded)."""

    reason: str


@dataclass(frozen=True)
class NeedsPlan:
    """Introspect and plan, then append PlanResolved and publish every task."""


@dataclass(frozen=True)
class SkipRun:
    """Planned with no chunk (nothing new since the cursor) but not ended: end it SKIPPED."""

    reason: str


@dataclass(frozen=True)
class PublishTasks:
    """Already planned (a redelivery, or another replica won the race): publish the tasks of the
    chunks nobody has started yet; the Nats-Msg-Id makes a re-publish inside the duplicate
    window a no-op, and started chunks are never re-queued after it."""

    plan: PlanResolved
    chunk_indexes: tuple[int, ...]


RequestDecision = Ignore | NeedsPlan | SkipRun | PublishTasks


def decide_request(state: RunState) -> RequestDecision:
    if state.requested is None or state.status is RunStatus.UNSPECIFIED:
        return Ignore("no RunRequested in the run's history")
    if state.terminal:
        return Ignore(f"run is {state.status.value}")
    if state.plan is None:
        return NeedsPlan()
    if not state.plan.chunks:  # a crash between the skip's plan and its RunCompleted
        return SkipRun(skip_reason(state.plan.row_filter))
    pending = tuple(
        i for i in sorted(state.chunks) if state.chunks[i].status is ChunkStatus.PENDING
    )
    return PublishTasks(plan=state.plan, chunk_indexes=pending)


def decide_cancel(state: RunState, now: datetime) -> RunCompleted | None:
    """CancelRequested -> RunCompleted(CANCELED) unless the run has already ended, or its
    manifest is committed (too late: the committer finishes the run). A scheduled run that was
    not admitted yet (SCHEDULED, READY) is canceled too."""
    if state.terminal or state.manifest is not None:
        return None
    if state.requested is None and state.status not in WAITING_RUN:
        return None
    reason = state.cancel.reason if state.cancel is not None else ""
    return RunCompleted(
        status=RunStatus.CANCELED,
        error_message=f"canceled: {reason}" if reason else "canceled",
        duration_ms=duration_ms(state, now),
    )


def planning_failed(state: RunState, message: str, now: datetime) -> RunCompleted:
    return RunCompleted(
        status=RunStatus.FAILED,
        error_message=f"planning failed: {message}",
        duration_ms=duration_ms(state, now),
    )


def duration_ms(state: RunState, now: datetime) -> int:
    if state.requested_at is None:
        return 0
    return max(0, int((now - state.requested_at).total_seconds() * 1000))


def tasks_for(
    run_id: str,
    spec: ExportSpec,
    plan: PlanResolved,
    indexes: tuple[int, ...] | None = None,
    *,
    priority: int = 0,
) -> list[ChunkTask]:
    """One ChunkTask per chunk (or per chosen chunk), in chunk order, on the run's priority
    lane."""
    wanted = None if indexes is None else set(indexes)
    if plan.chunk_by == CHUNK_BY_KEYS:  # the plan's key columns, whatever the spec named
        spec = dataclasses.replace(spec, chunk_columns=plan.key_columns)
    elif plan.strategy == "chunked" and not spec.chunk_column and plan.chunk_column:
        # a `table:` export chunked on its primary key: workers read the plan's key column
        spec = dataclasses.replace(spec, chunk_column=plan.chunk_column)
    if plan.row_filter is not None:  # the run's rows: after the cursor, or in the window
        spec = dataclasses.replace(spec, row_filter=plan.row_filter)
    return [
        ChunkTask(
            run_id=run_id,
            plan_id=plan.plan_id,
            spec=spec,
            range=rng,
            schema=plan.schema,
            chunk_count=len(plan.chunks),
            priority=priority,
            snapshot_id=plan.snapshot_id,
        )
        for rng in plan.chunks
        if wanted is None or rng.index in wanted
    ]


def task_msg_id(run_id: str, chunk_index: int) -> str:
    return f"{run_id}/task/{chunk_index}"


# ---- the rows of a run: incremental cursor, time window ---------------------------------------


@dataclass(frozen=True)
class Skip:
    """Nothing to export: the run ends SKIPPED with this reason, and writes no manifest."""

    reason: str


def row_column_type(spec: ExportSpec, intro: Introspection, column: str, key: str) -> str:
    """The Arrow type of the cursor or time column, which must be an integer, a date or a
    timestamp. Raises PlanError naming the config key."""
    field = next((f for f in intro.schema if f.name == column), None)
    if field is None:
        raise PlanError(f"{key} {column!r} is not a column of the source")
    if not (is_integer_type(field.type) or temporal_kind(field.type)):
        raise PlanError(
            f"{key} {column!r} must be an integer, date or timestamp column, not {field.type}"
        )
    return field.type


def incremental_filter(
    spec: ExportSpec, key_type: str, committed: ManifestCommitted | None
) -> RowFilter:
    """The rows strictly after the export's committed cursor. With no commit yet, or a commit
    on another column (the export was another mode, or its cursor changed), every row."""
    low = ""
    name = cursor_name(spec.cursor_column, spec.cursor_fallbacks)
    if committed is not None and committed.cursor_column == name:
        low = committed.cursor_high
    return RowFilter(
        column=spec.cursor_column,
        key_type=key_type,
        low=low,
        low_inclusive=False,
        fallbacks=spec.cursor_fallbacks,
    )


def cursor_type(spec: ExportSpec, intro: Introspection) -> str:
    """The Arrow type of the cursor: of cursor_column, and of every fallback alike (a
    COALESCE of an integer and a timestamp has no order)."""
    key_type = row_column_type(spec, intro, spec.cursor_column, "cursor_column")
    for column in spec.cursor_fallbacks:
        other = row_column_type(spec, intro, column, "cursor_column")
        if other != key_type:
            raise PlanError(
                f"cursor_column: {column!r} is {other} and {spec.cursor_column!r} is "
                f"{key_type}; the columns of a cursor must have one type"
            )
    return key_type


def bound_incremental(rf: RowFilter, high: str | None) -> RowFilter | Skip:
    """Close the cursor range at the highest cursor value there is now (rows that arrive while
    the run reads are the next run's). No value above the cursor: skip."""
    if high is None:
        return Skip(skip_reason(rf))
    return dataclasses.replace(rf, high=high, high_inclusive=True)


def skip_reason(rf: RowFilter | None) -> str:
    if rf is None:
        return "nothing to export"
    if rf.low:
        return f"no new rows since cursor {cursor_name(rf.column, rf.fallbacks)!r} = {rf.low}"
    return f"no rows with a value of cursor {cursor_name(rf.column, rf.fallbacks)!r}"


def skip_plan(plan: PlanResolved) -> PlanResolved:
    """The plan of a skipped run: no chunk (its row filter says why)."""
    empty = dataclasses.replace(plan, chunks=(), plan_id="")
    return dataclasses.replace(empty, plan_id=plan_id_of(empty))


def window_filter(spec: ExportSpec, key_type: str, now: datetime) -> RowFilter:
    """The rows since midnight UTC `days_window` days before `now`, written in the column's
    own kind (a date, a naive timestamp taken as UTC, or a timestamp with a zone)."""
    utc = now.astimezone(UTC)
    start = datetime(utc.year, utc.month, utc.day, tzinfo=UTC) - timedelta(days=spec.days_window)
    kind = temporal_kind(key_type)
    if kind == DATE:
        low = start.date().isoformat()
    elif kind == TIMESTAMP:
        low = start.replace(tzinfo=None).isoformat()
    elif kind == TIMESTAMPTZ:
        low = start.isoformat()
    else:
        raise PlanError(f"time_column {spec.time_column!r} must be a date or timestamp column")
    return RowFilter(column=spec.time_column, key_type=key_type, low=low, low_inclusive=True)


def skipped(state: RunState, reason: str, now: datetime) -> RunCompleted:
    return RunCompleted(
        status=RunStatus.SKIPPED, skip_reason=reason, duration_ms=duration_ms(state, now)
    )


# ---- schema drift against the export's last committed run -------------------------------------


def schema_drift(
    baseline: tuple[SchemaField, ...] | None, current: tuple[SchemaField, ...]
) -> SchemaChanged | None:
    """What changed since the last committed run's schema (None: no baseline yet, or none)."""
    if baseline is None:
        return None
    before = {f.name: f.type for f in baseline}
    now = {f.name: f.type for f in current}
    change = SchemaChanged(
        added=tuple(n for n in now if n not in before),
        removed=tuple(n for n in before if n not in now),
        type_changed=tuple(
            f"{n}: {before[n]} -> {now[n]}" for n in now if n in before and before[n] != now[n]
        ),
    )
    return change if change.added or change.removed or change.type_changed else None


def drift_message(change: SchemaChanged) -> str:
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("added", change.added),
            ("removed", change.removed),
            ("type changed", change.type_changed),
        )
        if names
    ]
    return "schema drift since the last committed run: " + "; ".join(parts)


def drift_outcome(
    spec: ExportSpec, change: SchemaChanged, state: RunState, now: datetime
) -> list[Warning | RunCompleted]:
    """What follows a SchemaChanged under the export's policy: `warn` (the default) a Warning
    and the run goes on; `continue` nothing more; `fail` the run fails before any read."""
    policy = spec.schema_policy or "warn"
    if policy == "fail":
        return [
            RunCompleted(
                status=RunStatus.FAILED,
                error_message=drift_message(change),
                duration_ms=duration_ms(state, now),
            )
        ]
    if policy == "warn":
        return [Warning(context="schema", message=drift_message(change))]
    return []


RAW_PARTITION_TYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "string"}
)


def partition_problem(spec: ExportSpec, schema: tuple[SchemaField, ...]) -> None:
    """partition_by: the column must be exported; a date or timestamp for a granularity, and
    otherwise of a type whose values name folders (no floats, binaries, lists, timestamps)."""
    field = next((f for f in schema if f.name == spec.partition_column), None)
    if field is None:
        raise PlanError(f"partition_by: no column {spec.partition_column!r} in the export")
    temporal = field.type.startswith(("date", "timestamp"))
    if spec.partition_granularity and not temporal:
        raise PlanError(
            f"partition_by: {spec.partition_granularity} needs a date or timestamp column; "
            f"{field.name!r} is {field.type}"
        )
    usable = field.type.startswith("date") or field.type in RAW_PARTITION_TYPES
    if not spec.partition_granularity and not usable:
        raise PlanError(
            f"partition_by: the values of {field.name!r} ({field.type}) cannot name a folder "
            "(or would make one per value); partition by an integer, string, boolean or date "
            "column, or a timestamp with a granularity"
        )
