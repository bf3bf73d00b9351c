"""The scheduler: installed schedules -> one RunScheduled per occurrence, READY when due,
RunRequested when the export has no other run in flight. Decisions are in
sluiceway.common.domain.schedule; this module loads, appends and keeps a small projection."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sluiceway.common import codec
from sluiceway.common.bus import MAX_EVENT_BYTES, Appended, Names
from sluiceway.common.domain import ids
from sluiceway.common.domain.access import Owner
from sluiceway.common.domain.events import (
    Body,
    ExportSpec,
    Producer,
    RunCompleted,
    RunEvent,
    RunReady,
    RunRequested,
    RunScheduled,
    RunStatus,
    priority_of,
)
from sluiceway.common.domain.lifecycle import TERMINAL_RUN
from sluiceway.common.domain.run import RunState, fold
from sluiceway.common.domain.schedule import (
    Admit,
    MarkReady,
    Schedule,
    Skip,
    decide_export,
    due_occurrences,
    expired,
    expiry_message,
    holding_run,
    occurrences,
)
from sluiceway.common.service import every
from sluiceway.planner.adapters.schedules import Installed

log = logging.getLogger(__name__)

REQUESTED_BY = "scheduler"


class FeedBehind(Exception):
    """The feed has facts pending that it could not read yet: no decision is taken."""


class ScheduleTaken(Exception):
    """An export's schedule belongs to a principal the caller may not act for."""


def installer(item: Installed) -> Owner:
    """Whom an installed schedule (and every run it makes) belongs to."""
    return Owner(item.installed_by, item.installed_team)


class SchedulerLog(Protocol):
    names: Names

    async def append(
        self,
        event: RunEvent,
        headers: Mapping[str, str] | None = None,
        *,
        expected_last_seq: int | None = None,
    ) -> Appended: ...

    async def last_scheduled(self, export_name: str) -> RunEvent | None: ...

    async def record_scheduled(self, export_name: str, seq: int) -> None: ...

    async def scheduler_snapshot(self) -> tuple[int, bytes] | None: ...

    async def save_scheduler_snapshot(self, seq: int, data: bytes) -> bool: ...

    async def stream_first_seq(self) -> int: ...

    async def history(self, run_id: str) -> list[tuple[int, RunEvent]]: ...


class ScheduleStore(Protocol):
    async def all(self) -> dict[str, Installed]: ...
    async def put(self, item: Installed) -> int: ...
    async def delete(self, export_name: str) -> None: ...


class RunFeed(Protocol):
    """The run facts the scheduler follows (scheduled, ready, requested, cancel_requested,
    completed), from the start of the log (or after `resume_after`), in stream order; each
    poll returns what is new, a bounded part of it: `caught_up` says whether that poll reached
    the stream's end, `position` is the last sequence it returned."""

    caught_up: bool
    position: int

    def resume_after(self, seq: int) -> None: ...

    async def poll(self) -> list[RunEvent]: ...

    async def close(self) -> None: ...


# the subjects a RunFeed follows
def feed_subjects(names: Names) -> list[str]:
    return [
        f"{names.namespace}.runs.*.scheduled.*",
        names.runs_of_kind("ready"),
        names.runs_of_kind("requested"),
        names.runs_of_kind("cancel_requested"),
        names.runs_of_kind("completed"),
    ]


class OpenRuns:
    """Every run that has not ended, by export, with the facts that decide admission. A
    RunCompleted removes the run (it is final and once-only), so the fold of what is kept
    (scheduled, ready, requested, cancel) never leaves the transition table."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, list[RunEvent]]] = {}
        self._export_of: dict[str, str] = {}

    def apply(self, event: RunEvent) -> None:
        body = event.body
        export = self._export_of.get(event.run_id)
        if isinstance(body, RunCompleted):
            if export is not None:
                self._runs[export].pop(event.run_id, None)
                del self._export_of[event.run_id]
            return
        if export is None:
            if not isinstance(body, RunScheduled | RunRequested):
                return  # a fact about a run that has ended (or that this feed never opened)
            export = event.export_name
            self._export_of[event.run_id] = export
        events = self._runs.setdefault(export, {}).setdefault(event.run_id, [])
        if all(e.event_id != event.event_id for e in events):
            events.append(event)

    def events(self) -> list[RunEvent]:
        """What is kept, each run's facts in the order they were applied."""
        return [e for runs in self._runs.values() for events in runs.values() for e in events]

    def runs(self, export: str) -> list[RunState]:
        return [fold(events, run_id) for run_id, events in self._runs.get(export, {}).items()]

    def exports(self) -> set[str]:
        return {name for name, runs in self._runs.items() if runs}


# how far ahead of its time an occurrence is appended (SCHEDULED): an open run keeps the run
# stream's retention from passing it, so a monthly schedule must not hold a month of history
SCHEDULE_AHEAD = timedelta(days=1)
# a snapshot of the open runs is stored at most this often (seconds), when the feed has moved
SNAPSHOT_EVERY_S = 10.0
_LENGTH = struct.Struct(">I")


def pack(events: Iterable[RunEvent]) -> bytes:
    """The open runs' facts as one compressed message: length-prefixed encoded events."""
    raw = b"".join(_LENGTH.pack(len(d)) + d for d in map(codec.encode, events))
    return zlib.compress(raw, 6)


def unpack(data: bytes) -> list[RunEvent]:
    raw = zlib.decompress(data)
    out, at = [], 0
    while at < len(raw):
        (n,) = _LENGTH.unpack_from(raw, at)
        out.append(codec.decode(raw[at + 4 : at + 4 + n]))
        at += 4 + n
    return out


@dataclass(frozen=True)
class ScheduleView:
    item: Installed
    next: tuple[datetime, ...]
    change: str = ""


class FileClock:
    """A clock read from a file holding an ISO-8601 time (SLUICEWAY_CLOCK_FILE): tests set
    the scheduler's time with it. Never set in production; unset, the clock is the system's."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def __call__(self) -> datetime:
        text = self._path.read_text(encoding="utf-8").strip()
        t = datetime.fromisoformat(text)
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        log_: SchedulerLog,
        store: ScheduleStore,
        feed: RunFeed,
        *,
        producer: Producer,
        clock: Callable[[], datetime] = utcnow,
        grace: timedelta = timedelta(seconds=60),
        ahead: timedelta = SCHEDULE_AHEAD,
        max_open: timedelta | None = None,
        tick_s: float = 1.0,
        after_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._log = log_
        self._store = store
        self._feed = feed
        self._producer = producer
        self._clock = clock
        self._grace = grace
        self._ahead = ahead
        # a run open longer than this is failed (the run stream's retention window; None: never)
        self._max_open = max_open
        self._tick_s = tick_s
        # the run log's after_message: the root spans of the runs this tick ended (skipped)
        self._after_tick = after_tick
        self.open = OpenRuns()
        self._ticking = asyncio.Lock()  # one tick at a time per replica
        self._restored = False
        self._snapshot_seq = 0  # the feed position of the last snapshot stored (or restored)
        self._snapshot_at = 0.0

    # ---- Control: schedule apply / list ----------------------------------------------------

    async def apply(
        self,
        specs: Iterable[ExportSpec],
        *,
        by: str = "",
        team: str = "",
        may_replace: Callable[[Owner], bool] = lambda _owner: True,
    ) -> list[ScheduleView]:
        """Install or update the schedules of checked specs for `by` of `team`; a spec without
        a schedule removes the export's installed one. An unchanged spec keeps its installation
        time (that time is where a new schedule starts counting occurrences). A schedule whose
        installer `may_replace` refuses is neither replaced nor removed: ScheduleTaken, and
        nothing is applied."""
        specs = list(specs)
        installed = await self._store.all()
        for spec in specs:
            old = installed.get(spec.name)
            if old is not None and not may_replace(installer(old)):
                raise ScheduleTaken(f"export {spec.name!r}: its schedule is not yours to change")
        now = self._clock()
        out: list[ScheduleView] = []
        for spec in specs:
            old = installed.get(spec.name)
            if spec.schedule is None:
                if old is not None:
                    await self._store.delete(spec.name)
                    out.append(ScheduleView(old, (), "removed"))
                continue
            if old is not None and old.spec == spec:
                out.append(ScheduleView(old, self._next(old, now), "unchanged"))
                continue
            item = Installed(spec=spec, installed_at=now, installed_by=by, installed_team=team)
            item = replace(item, revision=await self._store.put(item))
            out.append(ScheduleView(item, self._next(item, now), "updated" if old else "installed"))
            log.info("schedule %s: %s", "updated" if old else "installed", spec.name)
        return out

    async def list(self, upcoming: int = 3) -> list[ScheduleView]:
        now = self._clock()
        items = await self._store.all()
        return [
            ScheduleView(items[name], self._next(items[name], now, upcoming))
            for name in sorted(items)
        ]

    @staticmethod
    def _next(item: Installed, now: datetime, count: int = 3) -> tuple[datetime, ...]:
        s = item.spec.schedule
        if s is None or not s.enabled:
            return ()
        return tuple(occurrences(s, now, limit=count))

    async def close(self) -> None:
        await self._feed.close()

    async def holding_run(self, export: str) -> str:
        """The run of `export` that a new incremental submission would overlap, as the stream
        says now (the feed is read up to its end first); '' when none."""
        async with self._ticking:
            await self._catch_up()
            return holding_run(self.open.runs(export))

    async def _restore(self) -> None:
        """Start from the last snapshot of the open runs (any replica's) instead of sequence
        1, when the stream still holds everything after it: start-up then reads the open
        runs and the facts since the snapshot, however long the history. A snapshot older than
        the stream's start is dropped (a run it holds may have ended in what was purged)."""
        self._restored = True
        found = await self._log.scheduler_snapshot()
        if found is None:
            return
        seq, data = found
        if seq + 1 < await self._log.stream_first_seq():
            log.warning("the scheduler's snapshot (seq %d) is older than the run stream", seq)
            return
        for event in unpack(data):
            self.open.apply(event)
        self._feed.resume_after(seq)
        self._snapshot_seq = seq
        log.info("scheduler restored %d open run fact(s) at seq %d", len(self.open.events()), seq)

    async def _snapshot(self) -> None:
        """Store the open runs as of the feed's position, at most every SNAPSHOT_EVERY_S."""
        seq = self._feed.position
        now = time.monotonic()
        if seq <= self._snapshot_seq or now - self._snapshot_at < SNAPSHOT_EVERY_S:
            return
        data = pack(self.open.events())
        self._snapshot_at = now
        if len(data) > MAX_EVENT_BYTES - 4096:  # start-up then reads the stream from its start
            log.warning("the open runs (%d bytes packed) are too many for a snapshot", len(data))
            return
        await self._log.save_scheduler_snapshot(seq, data)
        self._snapshot_seq = seq

    async def _catch_up(self) -> None:
        """Apply the feed up to the stream's end: after a start on a long history that takes
        several polls, and no decision is taken on a part of it (a run requested after the
        first poll's end would be unseen, and another admitted beside it)."""
        if not self._restored:
            await self._restore()
        while True:
            events = await self._feed.poll()
            for event in events:
                self.open.apply(event)
            if self._feed.caught_up:
                return
            if not events:  # behind, and nothing came: fail this tick (or check), not decide
                raise FeedBehind(
                    "the scheduler's feed is behind the run stream and brought nothing"
                )

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop`. A failed tick (the bus is down) is logged and retried next tick:
        every append is once-only, so a tick repeated after a partial failure is harmless."""
        await every(self._tick_s, stop, self.tick, "scheduler tick")

    async def tick(self) -> None:
        async with self._ticking:
            try:
                await self._tick()
            finally:
                if self._after_tick is not None:
                    await self._after_tick()

    async def _tick(self) -> None:
        await self._catch_up()
        await self._snapshot()  # the open runs as of the feed's end, before this tick's acts
        now = self._clock()
        await self._expire(now)
        installed = await self._store.all()
        for name in sorted(installed):
            await self._schedule_ahead(installed[name], now)
        for export in sorted(self.open.exports() | set(installed)):
            item = installed.get(export)
            schedule = item.spec.schedule if item is not None else None
            for action in decide_export(
                schedule, self.open.runs(export), now=now, grace=self._grace
            ):
                await self._do(export, action, now)

    async def _expire(self, now: datetime) -> None:
        """Fail every run open longer than the retention window (EXPIRED), from its whole
        history: one that has reached its commit is left to the committer."""
        if self._max_open is None:
            return
        for export in sorted(self.open.exports()):
            for run in self.open.runs(export):
                if not expired(run, now=now, max_open=self._max_open):
                    continue
                state = fold([e for _, e in await self._log.history(run.run_id)], run.run_id)
                if state.status in TERMINAL_RUN or state.status is RunStatus.COMMITTING:
                    continue
                if state.manifest is not None:
                    continue
                body = RunCompleted(
                    status=RunStatus.FAILED, error_message=expiry_message(self._max_open)
                )
                await self._append(run.run_id, export, body, now)
                log.warning("run failed: %s", body.error_message, extra={"run_id": run.run_id})

    async def _schedule_ahead(self, item: Installed, now: datetime) -> None:
        s = item.spec.schedule
        if s is None or not s.enabled:
            return
        last = await self._log.last_scheduled(item.spec.name)
        anchor = item.installed_at
        if last is not None and isinstance(last.body, RunScheduled) and last.body.scheduled_at:
            anchor = max(anchor, last.body.scheduled_at)
        for at in due_occurrences(s, anchor=anchor, now=now, grace=self._grace, ahead=self._ahead):
            await self._do(item.spec.name, Schedule(at), now, item=item)

    async def _do(
        self,
        export: str,
        action: Schedule | MarkReady | Admit | Skip,
        now: datetime,
        *,
        item: Installed | None = None,
    ) -> None:
        match action:
            case Schedule(at):
                assert item is not None and item.spec.schedule is not None
                spec = item.spec
                run_id = ids.scheduled_run_id(export, at)
                # the occurrence belongs to whoever applied the schedule, and to their team
                body: Body = RunScheduled(
                    spec=spec,
                    scheduled_at=at,
                    priority=priority_of(spec.priority),
                    cron=spec.schedule.cron,
                    timezone=spec.schedule.timezone,
                    owner=item.installed_by,
                    team=item.installed_team,
                )
                appended = await self._append(run_id, export, body, now)
                # stored, or found stored (a crash before the state was written): either way
                # the export's state moves to it, so the next tick does not schedule it again
                await self._log.record_scheduled(export, appended.seq)
                if not appended.conflict and not appended.duplicate:
                    log.info(
                        "scheduled %s for %s", export, at.isoformat(), extra={"run_id": run_id}
                    )
            case MarkReady(run_id, reason, waiting_for):
                await self._append(run_id, export, RunReady(reason, waiting_for), now)
            case Admit(run_id):
                state = next((r for r in self.open.runs(export) if r.run_id == run_id), None)
                if state is None or state.scheduled is None:
                    return
                request = RunRequested(
                    spec=state.scheduled.spec,
                    requested_by=REQUESTED_BY,
                    options={"scheduled_at": _iso(state.scheduled_at)},
                    priority=state.scheduled.priority,
                    owner=state.scheduled.owner,
                    team=state.scheduled.team,
                )
                # once only: two replicas admitting the same run store one request
                await self._append(run_id, export, request, now, expected_last_seq=0)
                log.info("run admitted", extra={"run_id": run_id})
            case Skip(run_id, reason):
                skipped = RunCompleted(status=RunStatus.SKIPPED, skip_reason=reason)
                await self._append(run_id, export, skipped, now)
                log.info("occurrence skipped: %s", reason, extra={"run_id": run_id})

    async def _append(
        self,
        run_id: str,
        export: str,
        body: Body,
        now: datetime,
        *,
        expected_last_seq: int | None = None,
    ) -> Appended:
        event = ids.new_event(run_id, export, body, producer=self._producer, now=now)
        appended = await self._log.append(event, expected_last_seq=expected_last_seq)
        if not appended.conflict:
            self.open.apply(event)  # seen by this tick's next decisions, before the feed has it
        return appended


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t is not None else ""
