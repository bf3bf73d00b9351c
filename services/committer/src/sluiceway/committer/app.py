"""The committer's flow: load (cached fold) -> decide -> gates -> manifest -> _SUCCESS ->
ManifestCommitted -> latest pointer -> RunCompleted. Every step can be re-run after a crash."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, assert_never

from sluiceway.committer.adapters import files
from sluiceway.committer.domain.cursor import cursor_of
from sluiceway.committer.domain.decide import (
    SHAPE_CONTEXT,
    Commit,
    Fail,
    Finish,
    Nothing,
    completed,
    decide,
    quality_message,
    reconciliation_message,
    run_max_lengths,
    set_aside_warning,
    shape_warnings,
    skipped_empty,
    validation_message,
)
from sluiceway.committer.domain.gates import (
    QualityObserved,
    count_ranges,
    mismatched_chunks,
    quality_columns,
    quality_issues,
    reconcile,
    safe_relative,
    snapshot_reconciliation,
    validate_parts,
)
from sluiceway.committer.domain.manifest import build_manifest, serialize, total_bytes
from sluiceway.common import crash, destination, fingerprint, parts, telemetry
from sluiceway.common.bus import Appended
from sluiceway.common.destination import open_destination
from sluiceway.common.domain import ids
from sluiceway.common.domain.events import (
    Body,
    ExportSpec,
    ManifestCommitted,
    PlanResolved,
    RunEvent,
    RunStatus,
)
from sluiceway.common.domain.events import Producer as ProducerInfo
from sluiceway.common.domain.run import RunState, evolve, fold
from sluiceway.common.redact import redact
from sluiceway.common.sources import temp_bytes_of
from sluiceway.common.sources.base import Source, SourceError

log = logging.getLogger(__name__)

SourceFactory = Callable[[ExportSpec], Source]


class RunLog(Protocol):
    """The part of sluiceway.common.bus.Bus the committer uses (fakes implement it in tests)."""

    async def append(self, event: RunEvent) -> Appended: ...

    async def history(self, run_id: str) -> list[tuple[int, RunEvent]]: ...

    async def last_commit(self, export_name: str) -> RunEvent | None: ...

    async def record_commit(self, run_id: str, export_name: str) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


class Committer:
    """Handler of the `committer-runs` consumer.

    `source_factory` opens the source for the reconciliation count; with None the count is the
    sum of the rows the chunks reported (ChunkCompleted), which checks the parts against the
    workers' own tally only."""

    def __init__(
        self,
        log_: RunLog,
        *,
        producer: ProducerInfo,
        source_factory: SourceFactory | None,
        clock: Callable[[], datetime] = utcnow,
        count_attempts: int = 5,
        max_cached_runs: int = 1000,
        max_terminal_runs: int = 100_000,
    ) -> None:
        self._log = log_
        self._producer = producer
        self._open = source_factory
        self._clock = clock
        self._count_attempts = count_attempts
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        self._terminal: OrderedDict[str, None] = OrderedDict()
        self._max_cached = max_cached_runs
        self._max_terminal = max_terminal_runs

    # ---- the consumer -----------------------------------------------------------------------

    async def handle(self, event: RunEvent, delivered: int = 1) -> None:
        """Apply one run event and act on the decision. Returns once the effects are durable;
        raises on a transient error (the cached state is dropped and the message redelivered)."""
        run_id = event.run_id
        if run_id in self._terminal:
            return
        try:
            state = await self._state(event)
            if state.terminal:
                self._forget(run_id, terminal=True)
                return
            acted = await self._act(state, delivered)
        except BaseException:
            self._cache.pop(run_id, None)
            raise
        if acted:
            # reload on the next event: our own appends (or a racing replica's) are the truth
            self._cache.pop(run_id, None)
            if acted == "terminal":
                self._forget(run_id, terminal=True)

    async def _state(self, event: RunEvent) -> RunState:
        state = self._cache.get(event.run_id)
        if state is None:
            state = await self._load(event.run_id)
            if event.event_id not in state.applied:
                evolve(state, event)  # not yet readable through history: fold what we know
        else:
            evolve(state, event)  # idempotent by event id: a redelivery changes nothing
            self._cache.move_to_end(event.run_id)
        self._cache[event.run_id] = state
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return state

    async def _load(self, run_id: str) -> RunState:
        return fold((e for _, e in await self._log.history(run_id)), run_id)

    def _forget(self, run_id: str, *, terminal: bool) -> None:
        self._cache.pop(run_id, None)
        if terminal:
            self._terminal[run_id] = None
            while len(self._terminal) > self._max_terminal:
                self._terminal.popitem(last=False)

    async def _act(self, state: RunState, delivered: int) -> str:
        """'' when nothing was done, 'acted' or 'terminal' otherwise."""
        decision = decide(state)
        match decision:
            case Nothing():
                return ""
            case Fail(message):
                with telemetry.span("fail run", link_producer=True, run_id=state.run_id):
                    await self._complete(state, RunStatus.FAILED, message)
                return "terminal"
            case Finish():
                with telemetry.span("finish commit", link_producer=True, run_id=state.run_id):
                    await self._finish(state, None)
                return "terminal"
            case Commit():
                with telemetry.span(
                    "commit run", link_producer=True, run_id=state.run_id, delivery=delivered
                ):
                    return await self._commit(state, delivered)
            case _:
                assert_never(decision)

    # ---- the commit -------------------------------------------------------------------------

    async def _commit(self, state: RunState, delivered: int) -> str:
        spec, plan = state.spec, state.plan
        assert spec is not None and plan is not None
        dest = destination.open_destination(spec.destination)
        run_dir = destination.run_dir(dest, state.export_name, state.run_id)
        committed = state.committed_files()

        # gate: validation. A verdict already in the log is reused so that a restart decides
        # the same way and appends nothing new.
        if state.validation is None:
            with telemetry.span("validate parts", parts=len(committed)):
                names = [f.file_name for f in committed if safe_relative(f.file_name)]
                observed = await asyncio.to_thread(files.observe_parts, run_dir, names, dest)
                await self._append(state, validate_parts(committed, observed))
        assert state.validation is not None
        if not state.validation.passed:
            await self._complete(state, RunStatus.FAILED, validation_message(state))
            return "terminal"

        # gate: quality rules, over the validated parts. Computed again after a restart (the
        # same parts give the same issues, stored once by their ids).
        rules = spec.quality
        if rules is not None and rules.any:
            nulls, unique = quality_columns(rules)
            paths = [
                dest.path(state.export_name, "runs", state.run_id, f.file_name)
                for f in committed
                if safe_relative(f.file_name)
            ]
            with telemetry.span("quality gate", parts=len(paths)):
                rows, null_counts, repeats = await asyncio.to_thread(
                    files.observe_quality, paths, plan.format or spec.format, nulls, unique, dest
                )
            for issue in quality_issues(rules, QualityObserved(rows, null_counts, repeats)):
                await self._append(state, issue)
            if not state.quality_passed:
                await self._complete(state, RunStatus.FAILED, quality_message(state))
                return "terminal"

        # gate: reconciliation
        if state.reconciliation is None:
            result = snapshot_reconciliation(state)
            if result is None:
                try:
                    source_count = await self._source_count(state, spec, plan)
                except SourceError as exc:
                    if exc.retryable and delivered < self._count_attempts:
                        raise
                    await self._complete(
                        state, RunStatus.FAILED, f"reconciliation failed: cannot count: {exc}"
                    )
                    return "terminal"
                result = reconcile(source_count, state.total_rows)
            await self._append(state, result)
        assert state.reconciliation is not None
        if not state.reconciliation.matched:
            r = state.reconciliation
            await self._complete(
                state,
                RunStatus.FAILED,
                reconciliation_message(r.source_count, r.exported_rows, mismatched_chunks(state)),
            )
            return "terminal"

        # skip_empty: zero rows, and the source has none either: nothing is committed
        empty = skipped_empty(state, self._clock())
        if empty is not None:
            await self._set_aside_strays(state, committing=False)  # a zero-row chunk writes none
            await self._append(state, empty)
            log.info("run skipped: %s", empty.skip_reason, extra={"run_id": state.run_id})
            return "terminal"

        # shape drift: a string column's longest value grown shape_drift_ratio-fold since the
        # export's last commit is a Warning (once: a restart finds it in the log)
        lengths = run_max_lengths(state)
        if spec.shape_drift_ratio and not any(w.context == SHAPE_CONTEXT for w in state.warnings):
            last = await self._log.last_commit(state.export_name)
            if last is not None and isinstance(last.body, ManifestCommitted):
                baseline = dict(last.body.max_lengths)
                for warning in shape_warnings(
                    spec.shape_drift_ratio, lengths, baseline, last.run_id
                ):
                    await self._append(state, warning)

        # manifest -> _SUCCESS -> ManifestCommitted (DESIGN §6: a crash leaves none or a whole one)
        manifest = build_manifest(state)
        data = serialize(manifest)
        digest = fingerprint.of_bytes(data)
        mpath = dest.path(state.export_name, "runs", state.run_id, "manifest.json")
        spath = dest.path(state.export_name, "runs", state.run_id, "_SUCCESS")
        crash.point("committer.before_manifest")
        with telemetry.span("write manifest", parts=manifest["part_count"]):
            await asyncio.to_thread(dest.put, mpath, data)
            crash.point("committer.after_manifest")
            await asyncio.to_thread(dest.put, spath, digest.encode())
            crash.point("committer.after_success")
        temp_bytes = await self._temp_bytes(spec)
        body = ManifestCommitted(
            manifest_uri=dest.uri(mpath),
            fingerprint=digest,
            row_count=manifest["row_count"],
            part_count=manifest["part_count"],
            bytes=total_bytes(manifest),
            **cursor_of(spec, plan),
            temp_bytes_at_end=temp_bytes,
            max_lengths=lengths,
        )
        appended = await self._append(state, body)
        crash.point("committer.after_manifest_committed")
        if appended.conflict:
            log.info("another committer committed first", extra={"run_id": state.run_id})
        log.info(
            "manifest committed: %d part(s), %d row(s)",
            body.part_count,
            body.row_count,
            extra={"run_id": state.run_id},
        )
        await self._finish(state, data)
        return "terminal"

    async def _temp_bytes(self, spec: ExportSpec) -> int | None:
        """The source's pg_stat_database.temp_bytes now (None: no source, not PostgreSQL, or
        unreadable): with the plan's reading, RunSummary.pg_temp_bytes_delta. A measurement:
        it never fails or delays the commit beyond one short query."""
        if self._open is None:
            return None
        opener = self._open

        def measure() -> int | None:
            try:
                source = opener(spec)
            except SourceError:
                return None
            try:
                return temp_bytes_of(source)
            finally:
                source.close()

        return await asyncio.to_thread(measure)

    async def _source_count(self, state: RunState, spec: ExportSpec, plan: PlanResolved) -> int:
        if self._open is None:
            return sum(c.rows for c in state.chunks.values())
        opener = self._open
        # the plan names the chunk column (the `table:` shortcut resolves it while planning)
        spec = dataclasses.replace(spec, chunk_column=plan.chunk_column or spec.chunk_column)

        def count() -> int:
            source = opener(spec)
            try:
                return sum(source.count(spec, rng) for rng in count_ranges(plan))
            finally:
                source.close()

        return await asyncio.to_thread(count)

    async def _set_aside_strays(self, state: RunState, *, committing: bool = True) -> None:
        """Move every file of the run directory that the manifest does not list (losing
        attempts, attempts that died before FileWritten, torn temporary files; with nothing
        `committing`, every file) to _quarantine/<run_id>/, and say so with a Warning."""
        spec = state.spec
        assert spec is not None
        dest = destination.open_destination(spec.destination)
        run_dir = destination.run_dir(dest, state.export_name, state.run_id)
        target = destination.quarantine_dir(dest, state.export_name, state.run_id)
        keep = [f.file_name for f in state.committed_files()] if committing else []
        try:
            moved = await asyncio.to_thread(
                lambda: dest.set_aside(
                    run_dir, target, parts.stray_names(dest.files(run_dir), keep)
                )
            )
        except OSError as exc:  # they are in no manifest either way
            log.warning("cannot move stray files aside: %s", exc, extra={"run_id": state.run_id})
            return
        if moved:
            await self._append(state, set_aside_warning(state.run_id, moved))
            log.info("moved %d stray file(s) aside", len(moved), extra={"run_id": state.run_id})

    async def _finish(self, state: RunState, data: bytes | None) -> None:
        """Export state, latest pointer, then RunCompleted(SUCCEEDED). Re-run after a crash
        between ManifestCommitted and RunCompleted, so every step is idempotent. The state is
        stored before RunCompleted: the export's next run (which waits for this one to end)
        plans from this commit's cursor and schema."""
        spec = state.spec
        assert spec is not None
        await self._log.record_commit(state.run_id, state.export_name)
        crash.point("committer.after_state")
        if data is None:
            dest = destination.open_destination(spec.destination)
            mpath = dest.path(state.export_name, "runs", state.run_id, "manifest.json")
            data = await asyncio.to_thread(dest.read_bytes, mpath)
            if data is None:
                data = serialize(build_manifest(state))
        await self._point_at_latest(state, spec.destination, data)
        await self._set_aside_strays(state)
        await self._complete(state, RunStatus.SUCCEEDED)

    async def _point_at_latest(self, state: RunState, destination: str, data: bytes) -> None:
        """<dest>/<export>/manifest.json holds the manifest of the export's last commit in
        stream order (its last ManifestCommitted, one direct get): a late finish of an older
        run never moves it back. A newer commit landing while this one writes is checked
        once more, and its manifest written instead."""
        dest = open_destination(destination)
        pointer = dest.path(state.export_name, "manifest.json")
        for _ in range(5):
            last = await self._log.last_commit(state.export_name)
            latest = state.run_id if last is None else last.run_id
            body = data
            if latest != state.run_id:
                path = dest.path(state.export_name, "runs", latest, "manifest.json")
                found = await asyncio.to_thread(dest.read_bytes, path)
                if found is None:  # another destination: that run's committer points
                    return
                body = found
            await asyncio.to_thread(dest.put, pointer, body)
            again = await self._log.last_commit(state.export_name)
            if (state.run_id if again is None else again.run_id) == latest:
                return

    async def _complete(self, state: RunState, status: RunStatus, error: str = "") -> None:
        body = completed(state, status, self._clock(), redact(error))
        await self._append(state, body)
        log.info(
            "run %s%s",
            status.value.lower(),
            f": {body.error_message}" if error else "",
            extra={"run_id": state.run_id},
        )

    async def _append(self, state: RunState, body: Body) -> Appended:
        event = ids.new_event(
            state.run_id, state.export_name, body, producer=self._producer, now=self._clock()
        )
        appended = await self._log.append(event)
        if not appended.conflict:
            evolve(state, event)
        return appended
