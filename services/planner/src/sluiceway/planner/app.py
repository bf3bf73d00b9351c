"""The planner's flow: validate -> append RunRequested; load -> decide -> introspect -> append
PlanResolved -> publish tasks -> ack. Decisions live in domain/, I/O in the ports below."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from sluiceway.common import config, crash
from sluiceway.common.bus import Appended, Names
from sluiceway.common.domain import ids
from sluiceway.common.domain.access import ANONYMOUS, Owner, Principal, Verdict, cancel_verdict
from sluiceway.common.domain.events import (
    CHUNK_BY_KEYS,
    Body,
    CancelRequested,
    ChunkTask,
    ExportSpec,
    ManifestCommitted,
    PlanResolved,
    PlanWarning,
    Producer,
    RunCompleted,
    RunEvent,
    RunRequested,
    RunScheduled,
    SchemaField,
)
from sluiceway.common.domain.run import RunState, fold
from sluiceway.common.domain.schedule import serialises
from sluiceway.common.redact import redact
from sluiceway.common.sources.base import Introspection, Source, SourceError
from sluiceway.planner.domain.chunks import PlanError, temporal_kind
from sluiceway.planner.domain.plan import (
    Ignore,
    NeedsPlan,
    PublishTasks,
    Skip,
    SkipRun,
    bound_incremental,
    build_plan,
    check_applied_plan,
    cursor_type,
    decide_cancel,
    decide_request,
    drift_message,
    drift_outcome,
    incremental_filter,
    key_every,
    key_fields,
    pinned_high,
    planning_failed,
    row_column_type,
    schema_drift,
    skip_plan,
    skipped,
    task_msg_id,
    tasks_for,
    window_filter,
)

log = logging.getLogger(__name__)

SourceFactory = Callable[[ExportSpec], Source]


class RunLog(Protocol):
    """The part of sluiceway.common.bus.Bus the planner uses (fakes implement it in tests)."""

    names: Names

    async def append(self, event: RunEvent) -> Appended: ...

    async def history(self, run_id: str) -> list[tuple[int, RunEvent]]: ...

    async def publish_task(self, task: ChunkTask, msg_id: str) -> Appended: ...

    async def last_on_subject(self, subject: str) -> tuple[int, RunEvent] | None: ...

    async def last_commit(self, export_name: str) -> RunEvent | None: ...

    async def baseline(self, export_name: str) -> RunEvent | None: ...


class SnapshotHold(Protocol):
    """A source transaction held open so that a run's chunks can import its snapshot."""

    snapshot_id: str

    def alive(self) -> bool: ...

    def release(self) -> None: ...


class Keeper(Protocol):
    """Holds a run's snapshot until the run ends (adapters.snapshots.SnapshotKeeper)."""

    def keep(self, run_id: str, hold: SnapshotHold) -> None: ...


class RunNotFound(LookupError):
    pass


class RunHidden(RunNotFound):
    """The run exists but is not the caller's to know about: answered as not found."""


class CancelDenied(PermissionError):
    """The caller sees the run but its role does not let it cancel it."""


class RunEnded(RuntimeError):
    """A cancel for a run that has already ended: nothing is appended."""


class ExportBusy(RuntimeError):
    """A submission of an incremental export while another run of it has not ended: nothing
    is appended."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Planner:
    """Control operations and the handler of the `planner-requests` consumer."""

    def __init__(
        self,
        log_: RunLog,
        *,
        producer: Producer,
        source_factory: SourceFactory,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        entropy: Callable[[int], bytes] = os.urandom,
        plan_attempts: int = 3,
        keeper: Keeper | None = None,
        holding_run: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self._log = log_
        self._producer = producer
        self._open = source_factory
        self._env = os.environ if env is None else env
        self._clock = clock
        self._entropy = entropy
        self._plan_attempts = plan_attempts
        self._keeper = keeper  # None: consistent_snapshot runs fail to plan
        # the run of an export that a new incremental run would overlap (the scheduler's view
        # of open runs); None: not checked (the scheduler is off)
        self._holding_run = holding_run
        self._submitting = asyncio.Lock()  # check and append of a serialised export together

    # ---- validation (Control) ---------------------------------------------------------------

    def check_spec(self, spec: ExportSpec) -> ExportSpec:
        """Raises ConfigError naming the export and the field."""
        return config.check_spec(spec, env=self._env)

    def check_config(
        self, text: str, export_name: str = "", base_dir: str = "", file_name: str = ""
    ) -> ExportSpec:
        name = file_name or "<config>"
        specs = config.load_text(
            text, base_dir=base_dir or ".", file_name=name, env=self._env, read_query_files=False
        )
        return config.select(specs, export_name or None, file_name=name)

    # ---- Control operations -----------------------------------------------------------------

    async def submit(
        self,
        spec: ExportSpec,
        *,
        requested_by: str = "",
        options: Mapping[str, str] | None = None,
        priority: int = 0,
        owner: Owner | None = None,
    ) -> tuple[str, int]:
        """Append RunRequested for a checked spec, owned by `owner`; returns (run_id, stream
        seq). The spec holds only the *name* of the variable with the URL, never a secret.
        Raises ExportBusy for an incremental export with a run that has not ended."""
        if self._holding_run is None or not serialises(spec):
            return await self._request(spec, requested_by, options, priority, owner)
        async with self._submitting:  # the next check sees this append
            busy = await self._holding_run(spec.name)
            if busy:
                raise ExportBusy(
                    f"export {spec.name!r} is incremental and its run {busy} has not ended: "
                    "each incremental run starts from the cursor the previous one committed, "
                    "so they run one at a time; submit again once it ends"
                )
            return await self._request(spec, requested_by, options, priority, owner)

    async def _request(
        self,
        spec: ExportSpec,
        requested_by: str,
        options: Mapping[str, str] | None,
        priority: int,
        owner: Owner | None,
    ) -> tuple[str, int]:
        now = self._clock()
        run_id = ids.new_run_id(now, self._entropy(4))
        opts = dict(options or {})
        # `sluiceway apply` pins the run to a sealed plan: SubmitRunRequest has no plan_id field,
        # so it travels in options and becomes RunRequested.plan_id (checked when planning)
        body = RunRequested(
            spec=spec,
            requested_by=requested_by,
            plan_id=opts.get("plan_id", ""),
            options=opts,
            priority=priority,
            owner=owner.principal if owner else "",
            team=owner.team if owner else "",
        )
        appended = await self._log.append(self._event(run_id, spec.name, body, now))
        log.info("run requested", extra={"run_id": run_id})
        return run_id, appended.seq

    async def dry_run(self, spec: ExportSpec) -> tuple[PlanResolved, list[PlanWarning]]:
        """The plan SubmitRun would produce; appends nothing. Raises PlanError/SourceError."""
        spec, intro, skip, _ = await self._resolve(spec)
        plan, warnings = build_plan(spec, intro)
        if skip is not None:
            return skip_plan(plan), warnings
        change = schema_drift(await self._baseline(spec.name), plan.schema)
        if change is not None:
            warnings.append(PlanWarning(rule="schema_drift", message=drift_message(change)))
        return plan, warnings

    async def cancel(
        self, run_id: str, *, reason: str = "", requested_by: str = "", by: Principal = ANONYMOUS
    ) -> int:
        """Append CancelRequested on behalf of `by`. Raises InvalidRunId, RunNotFound (also for
        a run `by` may not see), CancelDenied, RunEnded."""
        ids.check_run_id(run_id)
        first = await self._log.last_on_subject(self._log.names.run_subject(run_id, "requested"))
        if first is None:  # a scheduled occurrence that is not admitted yet
            first = await self._log.last_on_subject(
                self._log.names.run_subject(run_id, "scheduled") + ".*"
            )
        if first is None:
            raise RunNotFound(f"run {run_id!r} not found")
        head = first[1].body
        owner = (
            Owner(head.owner, head.team)
            if isinstance(head, RunRequested | RunScheduled)
            else Owner()
        )
        match cancel_verdict(by, owner):
            case Verdict.NOT_FOUND:
                raise RunHidden(f"run {run_id!r} not found")
            case Verdict.DENIED:
                raise CancelDenied(f"{by.role.value} {by.name!r} may not cancel run {run_id!r}")
            case Verdict.ALLOW:
                pass
        ended = await self._log.last_on_subject(self._log.names.run_subject(run_id, "completed"))
        if ended is not None and isinstance(ended[1].body, RunCompleted):
            raise RunEnded(f"run {run_id!r} already ended {ended[1].body.status.value}")
        body = CancelRequested(reason=redact(reason), requested_by=requested_by)
        appended = await self._log.append(
            self._event(run_id, first[1].export_name, body, self._clock())
        )
        return appended.seq

    # ---- the consumer -----------------------------------------------------------------------

    async def handle(self, event: RunEvent, delivered: int = 1) -> None:
        """Handle one RunRequested or CancelRequested. Returns once its effects are durable;
        raises on a transient error (the message is redelivered)."""
        state = await self._load(event.run_id, event)
        match event.body:
            case RunRequested():
                await self._on_requested(state, delivered)
            case CancelRequested():
                completed = decide_cancel(state, self._clock())
                if completed is not None:
                    await self._append(state, completed)
                    log.info("run canceled", extra={"run_id": state.run_id})
            case _:
                log.debug("ignoring %s", event.kind, extra={"run_id": event.run_id})

    async def _load(self, run_id: str, delivered: RunEvent | None = None) -> RunState:
        history = [e for _, e in await self._log.history(run_id)]
        if delivered is not None and all(e.event_id != delivered.event_id for e in history):
            history.append(delivered)  # not readable yet (should not happen): fold what we know
        return fold(history, run_id)

    async def _on_requested(self, state: RunState, delivered: int) -> None:
        decision = decide_request(state)
        match decision:
            case Ignore(reason):
                log.info("nothing to plan: %s", reason, extra={"run_id": state.run_id})
            case PublishTasks():
                await self._publish(state, decision.plan, decision.chunk_indexes)
            case SkipRun(reason):
                await self._skip(state, reason)
            case NeedsPlan():
                await self._plan(state, delivered)

    async def _plan(self, state: RunState, delivered: int) -> None:
        owned: list[SnapshotHold] = []
        try:
            await self._plan_holding(state, delivered, owned)
        finally:
            # not handed to the keeper (no plan stored, another replica's plan, an error that
            # redelivers the request): no chunk of this run will import it
            for hold in owned:
                await asyncio.to_thread(hold.release)

    async def _plan_holding(
        self, state: RunState, delivered: int, owned: list[SnapshotHold]
    ) -> None:
        """Plan the run. A snapshot it exports goes into `owned` until the keeper takes it."""
        assert state.requested is not None
        spec = state.requested.spec
        try:
            spec, intro, skip, hold = await self._resolve(
                spec, state.requested.options, run_id=state.run_id
            )
            if hold is not None:
                owned.append(hold)
            plan, warnings = build_plan(spec, intro)
            if skip is not None:
                plan = skip_plan(plan)
            check_applied_plan(state.requested, plan)
        except (PlanError, config.ConfigError) as exc:
            await self._fail(state, str(exc))
            return
        except SourceError as exc:
            if exc.retryable and delivered < self._plan_attempts:
                raise
            await self._fail(state, str(exc))
            return
        except Exception as exc:
            if delivered < self._plan_attempts:
                raise
            await self._fail(state, f"{type(exc).__name__}: {exc}")
            return
        if skip is None:
            # the schema gate comes before the plan: with policy fail, nothing is planned or read
            change = schema_drift(await self._baseline(spec.name), plan.schema)
            if change is not None:
                await self._append(state, change)
                for body in drift_outcome(spec, change, state, self._clock()):
                    await self._append(state, body)
                    if isinstance(body, RunCompleted):
                        log.warning("%s", body.error_message, extra={"run_id": state.run_id})
                        return
        for warning in warnings:
            await self._append(state, warning)
        appended = await self._append(state, plan)
        if appended.conflict or (appended.duplicate and not await self._stored_is(state, plan)):
            # another replica planned first: its plan (and its snapshot) is the run's plan
            theirs = await self._load(state.run_id)
            decision = decide_request(theirs)
            if isinstance(decision, PublishTasks):
                await self._publish(theirs, decision.plan, decision.chunk_indexes)
            elif isinstance(decision, SkipRun):
                await self._skip(theirs, decision.reason)
            return
        if skip is not None:
            await self._skip(state, skip.reason)
            return
        if owned:
            assert self._keeper is not None  # _resolve holds nothing without a keeper
            # held before any task is published: no chunk can ask for the snapshot earlier
            self._keeper.keep(state.run_id, owned.pop())
        log.info(
            "run planned: %d chunk(s), plan %s%s",
            len(plan.chunks),
            plan.plan_id,
            f", snapshot {plan.snapshot_id}" if plan.snapshot_id else "",
            extra={"run_id": state.run_id},
        )
        crash.point("planner.after_plan")
        await self._publish(state, plan, tuple(r.index for r in plan.chunks))

    async def _stored_is(self, state: RunState, plan: PlanResolved) -> bool:
        """Whether the run's stored plan is `plan`. A second replica's plan inside the
        duplicate window is acknowledged as a duplicate of the first (same event id): it is
        ours only if it is the same plan, snapshot included."""
        subject = self._log.names.run_subject(state.run_id, "plan_resolved")
        found = await self._log.last_on_subject(subject)
        return found is not None and found[1].body == plan

    async def _publish(self, state: RunState, plan: PlanResolved, indexes: tuple[int, ...]) -> None:
        assert state.requested is not None
        tasks = tasks_for(
            state.run_id, state.requested.spec, plan, indexes, priority=state.priority
        )
        for i, task in enumerate(tasks):
            if i == len(tasks) // 2:
                crash.point("planner.mid_tasks")
            await self._log.publish_task(task, task_msg_id(state.run_id, task.range.index))

    async def _fail(self, state: RunState, message: str) -> None:
        body = planning_failed(state, redact(message), self._clock())
        await self._append(state, body)
        log.warning("planning failed: %s", body.error_message, extra={"run_id": state.run_id})

    async def _baseline(self, export_name: str) -> tuple[SchemaField, ...] | None:
        """The schema of the export's last committed run (its plan's), if it has one."""
        found = await self._log.baseline(export_name)
        if found is None or not isinstance(found.body, PlanResolved):
            return None
        return found.body.schema

    async def _skip(self, state: RunState, reason: str) -> None:
        await self._append(state, skipped(state, reason, self._clock()))
        log.info("run skipped: %s", reason, extra={"run_id": state.run_id})

    async def _resolve(
        self, spec: ExportSpec, options: Mapping[str, str] | None = None, *, run_id: str = ""
    ) -> tuple[ExportSpec, Introspection, Skip | None, SnapshotHold | None]:
        """The run's rows: the spec with its row filter (incremental: after the committed
        cursor; time_window: since the window's start), the source introspected over them,
        whether there is nothing to export, and (consistent_snapshot, for a run: `run_id`) the
        hold of the snapshot all of that was read in, which the caller must keep or release."""
        committed: ManifestCommitted | None = None
        if spec.mode == "incremental":
            last = await self._log.last_commit(spec.name)
            if last is not None and isinstance(last.body, ManifestCommitted):
                committed = last.body
        holding = bool(run_id) and spec.consistent_snapshot
        if holding and self._keeper is None:
            raise PlanError("consistent_snapshot: this planner cannot hold snapshots")
        return await asyncio.to_thread(
            self._resolve_rows,
            spec,
            committed,
            self._clock(),
            options or {},
            f"sluiceway-snapshot {run_id}" if holding else "",
        )

    def _resolve_rows(
        self,
        spec: ExportSpec,
        committed: ManifestCommitted | None,
        now: datetime,
        options: Mapping[str, str],
        snapshot_label: str = "",
    ) -> tuple[ExportSpec, Introspection, Skip | None, SnapshotHold | None]:
        source = self._open(spec)
        try:
            snapshot_id = ""
            if snapshot_label:
                export = getattr(source, "export_snapshot", None)
                if export is None:
                    raise PlanError(
                        f"consistent_snapshot: a {spec.source.engine} source has no snapshots"
                    )
                # bounds, counts and the cursor's high-water mark below all read this snapshot
                snapshot_id = export(snapshot_label)
            spec, intro, skip = self._rows_of(source, spec, committed, now, options)
            hold: SnapshotHold | None = None
            if snapshot_id:
                hold = source.hold_snapshot()  # type: ignore[attr-defined]
                intro = replace(intro, snapshot_id=snapshot_id)
            return spec, intro, skip, hold
        finally:
            source.close()  # a snapshot not handed over ends with its session here

    def _rows_of(
        self,
        source: Source,
        spec: ExportSpec,
        committed: ManifestCommitted | None,
        now: datetime,
        options: Mapping[str, str],
    ) -> tuple[ExportSpec, Introspection, Skip | None]:
        intro = source.introspect(spec)
        if spec.chunk_by == CHUNK_BY_KEYS:  # equal-row ranges of the key, read off the source
            fields = key_fields(spec, intro)
            # chunk_count: of the rows there are (a row estimate would give other shares)
            rows = source.count(spec, None) if not spec.chunk_size else intro.row_estimate
            bounds = source.key_boundaries(spec, fields, key_every(spec, rows))
            intro = replace(intro, key_fields=fields, key_boundaries=tuple(map(tuple, bounds)))
        if spec.mode == "incremental":
            key_type = cursor_type(spec, intro)
            after = incremental_filter(spec, key_type, committed)
            high = pinned_high(after, options) or source.max_of(
                replace(spec, row_filter=after),
                spec.cursor_column,
                temporal=bool(temporal_kind(key_type)),
                fallbacks=spec.cursor_fallbacks,
            )
            bounded = bound_incremental(after, high)
            if isinstance(bounded, Skip):
                return replace(spec, row_filter=after), intro, bounded
            rows = bounded
        elif spec.mode == "time_window":
            key_type = row_column_type(spec, intro, spec.time_column, "time_column")
            rows = window_filter(spec, key_type, now)
        else:
            return spec, intro, None
        spec = replace(spec, row_filter=rows)
        return spec, source.introspect(spec), None  # the estimate over the run's rows

    async def _append(self, state: RunState, body: Body) -> Appended:
        return await self._log.append(self._event(state.run_id, state.export_name, body))

    def _event(
        self, run_id: str, export_name: str, body: Body, now: datetime | None = None
    ) -> RunEvent:
        return ids.new_event(
            run_id, export_name, body, producer=self._producer, now=now or self._clock()
        )
