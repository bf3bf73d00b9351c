"""The scheduler against a real nats-server: its schedules bucket, its run feed and its
once-only appends, with a controllable clock. Each Scheduler object is one replica (or one
restart: a new object rebuilds its projection from the stream)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sluiceway.common.bus import Bus, Names
from sluiceway.common.domain import events as ev
from sluiceway.common.domain import ids
from sluiceway.common.domain.run import RunState, fold
from sluiceway.common.domain.schedule import check_schedule
from sluiceway.planner.adapters.runfeed import JetStreamRunFeed
from sluiceway.planner.adapters.schedules import ScheduleBucket
from sluiceway.planner.scheduler import Scheduler, feed_subjects
from tests.unit.histories import History

pytestmark = pytest.mark.integration

GRACE = timedelta(seconds=60)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, 3, hour, minute, second, tzinfo=UTC)


def spec(name: str = "orders", **schedule: str) -> ev.ExportSpec:
    s = check_schedule(ev.ScheduleSpec(cron=schedule.pop("cron", "0 * * * *"), **schedule))
    return ev.ExportSpec(
        name=name,
        source=ev.SourceSpec(engine="sqlite", path="/tmp/none.db"),
        table="orders",
        mode="full",
        format="parquet",
        destination="/tmp/out",
        priority=ev.PRIORITY_HIGH,
        schedule=s,
    )


REPLICAS: list[Scheduler] = []


@pytest.fixture(autouse=True)
async def close_replicas(bus: Bus) -> AsyncIterator[None]:
    yield
    while REPLICAS:  # their feeds' subscriptions would hold the connection's drain open
        await REPLICAS.pop().close()


def replica(
    bus: Bus,
    clock: Clock,
    name: str = "s1",
    max_per_poll: int = 5000,
    ahead: timedelta = timedelta(days=1),
    *,
    feed: JetStreamRunFeed | None = None,
    max_open: timedelta | None = None,
) -> Scheduler:
    s = Scheduler(
        bus,
        ScheduleBucket(bus.js, f"{bus.names.namespace.upper()}_SCHEDULES"),
        feed or JetStreamRunFeed(bus, feed_subjects(bus.names), max_per_poll=max_per_poll),
        producer=ev.Producer("scheduler", name),
        clock=clock,
        grace=GRACE,
        ahead=ahead,
        max_open=max_open,
    )
    REPLICAS.append(s)
    return s


async def runs_of(bus: Bus, kind: str = "scheduled.*") -> dict[str, RunState]:
    """Every run with an event of `kind`, folded from its whole history on the stream."""
    subject = f"{bus.names.namespace}.runs.*.{kind}"
    run_ids = {e.run_id for _, e in await bus.read_range(subject)}
    return {r: fold([e for _, e in await bus.history(r)], r) for r in sorted(run_ids)}


def by_time(runs: dict[str, RunState]) -> dict[datetime, RunState]:
    return {r.scheduled_at: r for r in runs.values() if r.scheduled_at is not None}


async def end(bus: Bus, run_id: str) -> None:
    """The run in flight ends (as the planner ends a canceled run)."""
    for body in (ev.CancelRequested(reason="done"), ev.RunCompleted(status=ev.RunStatus.CANCELED)):
        event = ids.new_event(run_id, "orders", body, producer=ev.Producer("t", "t"), now=at(0))
        await bus.append(event)


async def test_a_schedule_fires_on_time_and_the_next_occurrence_is_scheduled_ahead(
    bus: Bus,
) -> None:
    clock = Clock(at(1, 50))
    s = replica(bus, clock)
    [view] = await s.apply([spec()], by="test")
    assert (view.change, view.next[:2]) == ("installed", (at(2), at(3)))
    await s.tick()
    [run] = (await runs_of(bus)).values()
    assert (run.status, run.scheduled_at, run.run_id) == (
        ev.RunStatus.SCHEDULED,
        at(2),
        ids.scheduled_run_id("orders", at(2)),
    )
    assert run.priority == ev.PRIORITY_HIGH and run.spec == spec()
    clock.now = at(1, 59, 59)
    await s.tick()
    assert [r.status for r in (await runs_of(bus)).values()] == [ev.RunStatus.SCHEDULED]
    clock.now = at(2, 0, 1)
    await s.tick()
    runs = by_time(await runs_of(bus))
    assert runs[at(2)].status is ev.RunStatus.REQUESTED
    assert runs[at(2)].requested is not None and runs[at(2)].requested.requested_by == "scheduler"
    assert runs[at(2)].requested.priority == ev.PRIORITY_HIGH
    assert runs[at(3)].status is ev.RunStatus.SCHEDULED  # the next one, ahead of its time
    # applying the same config again changes nothing
    [again] = await s.apply([spec()], by="test")
    assert again.change == "unchanged"


async def test_two_replicas_append_exactly_one_run_per_tick(bus: Bus) -> None:
    clock = Clock(at(1, 0, 30))
    a, b = replica(bus, clock, "a"), replica(bus, clock, "b")
    await a.apply([spec(cron="*/10 * * * *")])
    admitted: list[str] = []
    for minute in range(0, 60, 5):  # both replicas tick concurrently, every 5 minutes, 1 hour
        clock.now = at(1, minute, 30)
        await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
        runs = await runs_of(bus)
        for run in runs.values():  # each admitted run ends, so that the next one may start
            if run.status is ev.RunStatus.REQUESTED and run.run_id not in admitted:
                admitted.append(run.run_id)
                await end(bus, run.run_id)
    runs = await runs_of(bus)
    times = sorted(by_time(runs))
    assert times == [at(1, m) for m in range(10, 60, 10)] + [at(2)]
    # one RunScheduled per occurrence and one RunRequested per run, whoever appended them
    events = [e for _, e in await bus.read_range(f"{bus.names.namespace}.runs.>")]
    counts = Counter((e.run_id, e.kind) for e in events)
    assert all(n == 1 for n in counts.values()), counts
    assert len(admitted) == 5 and all(not r.anomalies for r in runs.values())
    producers = {e.producer.instance for e in events if e.kind == "scheduled"}
    assert producers <= {"a", "b"}


@pytest.mark.parametrize(
    ("policy", "run_times", "skipped"),
    [
        ("all", [at(2), at(3), at(4), at(5)], []),
        ("latest", [at(5)], [at(2)]),
        ("none", [], [at(2)]),
    ],
)
async def test_a_restart_after_downtime_follows_the_catch_up_policy(
    bus: Bus, policy: str, run_times: list[datetime], skipped: list[datetime]
) -> None:
    clock = Clock(at(1, 30))
    first = replica(bus, clock)
    await first.apply([spec(catch_up=policy)])
    await first.tick()  # 02:00 is scheduled ahead, then the scheduler is down until 05:30
    clock.now = at(5, 30)
    restarted = replica(bus, clock, "s1-restarted")
    await restarted.tick()
    await restarted.tick()
    runs = by_time(await runs_of(bus))
    assert at(6) in runs and runs[at(6)].status is ev.RunStatus.SCHEDULED
    ran = sorted(
        t for t, r in runs.items() if r.status in (ev.RunStatus.REQUESTED, ev.RunStatus.READY)
    )
    assert ran == run_times
    # one at a time: the oldest kept occurrence is admitted, the others wait in READY
    if run_times:
        assert runs[run_times[0]].status is ev.RunStatus.REQUESTED
        assert all(runs[t].status is ev.RunStatus.READY for t in run_times[1:])
    gone = sorted(t for t, r in runs.items() if r.status is ev.RunStatus.SKIPPED)
    assert gone == skipped
    for t in gone:
        completion = runs[t].completion
        assert completion is not None and f"catch_up: {policy}" in completion.skip_reason
    # occurrences the policy drops are never appended (no run at 03:00/04:00 unless "all")
    assert (at(3) in runs) is (policy == "all")


async def test_an_occurrence_waits_in_ready_while_the_previous_run_is_in_flight(
    bus: Bus,
) -> None:
    clock = Clock(at(1, 59))
    s = replica(bus, clock)
    await s.apply([spec()])
    await s.tick()
    clock.now = at(2, 0, 5)
    await s.tick()  # 02:00 admitted; it is still running at 03:00
    clock.now = at(3, 0, 5)
    await s.tick()
    await s.tick()
    runs = by_time(await runs_of(bus))
    first, second = runs[at(2)], runs[at(3)]
    assert (first.status, second.status) == (ev.RunStatus.REQUESTED, ev.RunStatus.READY)
    assert second.ready is not None and second.ready.waiting_for == first.run_id
    await end(bus, first.run_id)
    clock.now = at(3, 20)
    await s.tick()
    runs = by_time(await runs_of(bus))
    assert runs[at(3)].status is ev.RunStatus.REQUESTED
    # the waiting run kept its identity: one RunReady, then one RunRequested
    assert [e.kind for _, e in await bus.history(second.run_id)] == [
        "scheduled",
        "ready",
        "requested",
    ]


async def test_with_overlap_skip_an_occurrence_is_skipped_naming_the_run_in_flight(
    bus: Bus,
) -> None:
    clock = Clock(at(1, 59))
    s = replica(bus, clock)
    await s.apply([spec(overlap="skip")])
    await s.tick()
    clock.now = at(2, 0, 5)
    await s.tick()
    clock.now = at(3, 0, 5)
    await s.tick()
    runs = by_time(await runs_of(bus))
    first, second = runs[at(2)], runs[at(3)]
    assert first.status is ev.RunStatus.REQUESTED
    assert second.status is ev.RunStatus.SKIPPED and second.completion is not None
    assert second.completion.skip_reason == f"run {first.run_id} of the export is still in flight"


async def test_a_manual_run_in_flight_holds_a_scheduled_one_and_a_cancel_ends_a_waiting_one(
    bus: Bus,
) -> None:
    clock = Clock(at(1, 59))
    s = replica(bus, clock)
    await s.apply([spec()])
    manual = ids.new_event(
        "20261203T015900Z-manual01",
        "orders",
        ev.RunRequested(spec=dataclasses.replace(spec(), schedule=None), requested_by="me"),
        producer=ev.Producer("planner", "p"),
        now=at(1, 59),
    )
    await bus.append(manual)
    await s.tick()
    clock.now = at(2, 0, 5)
    await s.tick()
    run = by_time(await runs_of(bus))[at(2)]
    assert run.status is ev.RunStatus.READY and run.ready is not None
    assert run.ready.waiting_for == manual.run_id
    # disabling the schedule: the next occurrence, when due, is skipped
    await s.apply([spec(enabled=False)])  # type: ignore[arg-type]
    clock.now = at(3, 0, 5)
    await s.tick()
    runs = by_time(await runs_of(bus))
    assert runs[at(3)].status is ev.RunStatus.SKIPPED
    assert at(4) not in runs  # nothing new is scheduled while disabled


async def test_a_history_longer_than_one_poll_is_read_to_its_end_before_any_decision(
    bus: Bus,
) -> None:
    """Twelve other runs come and go, then a manual run of `orders` is requested: a replica
    whose feed returns 5 facts a poll must still see it, both for the one-run-at-a-time check
    of a submission and for the occurrence that falls due."""
    producer = ev.Producer("planner", "p")
    for i in range(12):
        run_id = f"20261203T010000Z-other{i:03d}"
        other = dataclasses.replace(spec(f"other{i}"), schedule=None)
        for body in (
            ev.RunRequested(spec=other, requested_by="me"),
            ev.CancelRequested(reason="done"),
            ev.RunCompleted(status=ev.RunStatus.CANCELED),
        ):
            await bus.append(ids.new_event(run_id, f"other{i}", body, producer=producer, now=at(1)))
    manual = ids.new_event(
        "20261203T015900Z-manual02",
        "orders",
        ev.RunRequested(spec=dataclasses.replace(spec(), schedule=None), requested_by="me"),
        producer=producer,
        now=at(1, 59),
    )
    await bus.append(manual)
    clock = Clock(at(1, 59))
    fresh = replica(bus, clock, "fresh", max_per_poll=5)
    assert await fresh.holding_run("orders") == manual.run_id  # 37 facts: eight polls
    s = replica(bus, clock, "s", max_per_poll=5)
    await s.apply([spec()])
    await s.tick()
    clock.now = at(2, 0, 5)
    await s.tick()
    run = by_time(await runs_of(bus))[at(2)]
    assert run.status is ev.RunStatus.READY and run.ready is not None
    assert run.ready.waiting_for == manual.run_id  # not admitted beside the manual run


async def _come_and_go(bus: Bus, count: int, start: int = 0) -> None:
    """`count` manual runs of other exports, requested and ended."""
    producer = ev.Producer("planner", "p")
    for i in range(start, start + count):
        run_id = f"20261203T010000Z-gone{i:04d}"
        other = dataclasses.replace(spec(f"gone{i}"), schedule=None)
        for body in (
            ev.RunRequested(spec=other, requested_by="me"),
            ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="gone"),
        ):
            await bus.append(ids.new_event(run_id, f"gone{i}", body, producer=producer, now=at(1)))


async def test_a_restart_reads_the_open_runs_and_what_is_new_not_the_whole_history(
    bus: Bus,
) -> None:
    """Start-up does not depend on the length of history: a replica stores a snapshot of the
    open runs with its feed position, and a restart reads that plus the facts after it."""
    await _come_and_go(bus, 400)  # 800 facts of runs that have ended
    manual = ids.new_event(
        "20261203T015900Z-manual03",
        "orders",
        ev.RunRequested(spec=dataclasses.replace(spec(), schedule=None), requested_by="me"),
        producer=ev.Producer("planner", "p"),
        now=at(1, 59),
    )
    await bus.append(manual)
    clock = Clock(at(1, 59))
    first_feed = JetStreamRunFeed(bus, feed_subjects(bus.names))
    first = replica(bus, clock, "first", feed=first_feed)
    await first.tick()  # reads the whole history once, then stores its snapshot
    assert first_feed.delivered >= 801
    snapshot = await bus.scheduler_snapshot()
    assert snapshot is not None and snapshot[0] == first_feed.position
    await _come_and_go(bus, 5, start=400)  # history after the snapshot: 10 facts

    feed = JetStreamRunFeed(bus, feed_subjects(bus.names))
    restarted = replica(bus, clock, "restarted", feed=feed)
    assert await restarted.holding_run("orders") == manual.run_id  # the open run, restored
    assert feed.delivered == 10  # the facts since the snapshot, not the 811 of the history
    assert restarted.open.exports() == {"orders"}


async def _after_downtime(bus: Bus, policy: str, *, purge: bool) -> dict[datetime, ev.RunStatus]:
    """A schedule across a downtime, once with the history of its ended run purged as
    retention would (its events archived), once with it kept. Occurrences are appended 30
    minutes ahead, so that the 02:00 run's facts all come before the next occurrence's."""
    half = timedelta(minutes=30)
    clock = Clock(at(1, 40))
    first = replica(bus, clock, ahead=half)
    await first.apply([spec(catch_up=policy)])
    await first.tick()  # 02:00 is scheduled ahead
    clock.now = at(2, 0, 1)
    await first.tick()  # 02:00 admitted
    done = ids.scheduled_run_id("orders", at(2))
    await end(bus, done)
    clock.now = at(2, 0, 2)
    await first.tick()
    assert {ids.scheduled_run_id("orders", at(2))} == set(await runs_of(bus))
    if purge:  # every run ended: retention may purge the whole stream
        await bus.js.purge_stream(bus.names.runs_stream, seq=await bus.stream_last_seq() + 1)
        assert await bus.history(done) == []
    clock.now = at(5, 30)  # down until 05:30
    restarted = replica(bus, clock, "s1-restarted", ahead=half)
    await restarted.tick()
    await restarted.tick()
    return {t: r.status for t, r in by_time(await runs_of(bus)).items()}


@pytest.mark.parametrize(
    ("policy", "after"),
    [
        # the latest missed occurrence runs, the next is scheduled ahead
        ("latest", {at(5): ev.RunStatus.REQUESTED, at(6): ev.RunStatus.SCHEDULED}),
        # every missed one, oldest first: 03:00 runs, the others wait; 02:00 never again
        (
            "all",
            {
                at(3): ev.RunStatus.REQUESTED,
                at(4): ev.RunStatus.READY,
                at(5): ev.RunStatus.READY,
                at(6): ev.RunStatus.SCHEDULED,
            },
        ),
    ],
)
async def test_catch_up_behaves_the_same_once_the_history_is_gone(
    bus: Bus, policy: str, after: dict[datetime, ev.RunStatus]
) -> None:
    other = Bus(bus.nc, Names(bus.names.namespace + "p"))
    await other.ensure_streams()
    kept = await _after_downtime(bus, policy, purge=False)
    purged = await _after_downtime(other, policy, purge=True)
    assert kept == {at(2): ev.RunStatus.CANCELED, **after}
    # the purged 02:00 run is not scheduled again: its occurrence is in the export state
    assert purged == after


async def test_a_run_open_longer_than_the_retention_window_is_failed_as_expired(
    bus: Bus,
) -> None:
    """Retention never drops an open run, so one that stays open would hold the window back:
    past it, the scheduler fails it with a named error. One that has reached its commit is
    the committer's to end."""
    producer = ev.Producer("planner", "p")

    async def requested(run_id: str, export: str, *more: ev.Body) -> None:
        manual = dataclasses.replace(spec(export), schedule=None)
        for body in (ev.RunRequested(spec=manual, requested_by="me"), *more):
            await bus.append(ids.new_event(run_id, export, body, producer=producer, now=at(1)))

    await requested("20261203T010000Z-stuck0001", "stuck")
    committing = History("20261203T010000Z-commit001").planned(1).chunk_done(0)
    committing.add(ev.ValidationResult(passed=True))
    committing.add(ev.ManifestCommitted(manifest_uri="file:///m", row_count=10, part_count=1))
    for event in committing.events:  # requested long before: T0
        await bus.append(event)
    clock = Clock(at(1, 59))
    s = replica(bus, clock, "s", max_open=timedelta(hours=1))
    await s.tick()  # 59 minutes open: within the window
    stuck = fold([e for _, e in await bus.history("20261203T010000Z-stuck0001")])
    assert stuck.status is ev.RunStatus.REQUESTED
    clock.now = at(2, 0, 1)
    await s.tick()
    stuck = fold([e for _, e in await bus.history("20261203T010000Z-stuck0001")])
    assert stuck.status is ev.RunStatus.FAILED and stuck.completion is not None
    assert stuck.completion.error_message.startswith(ev.EXPIRED + ": still open after 1h")
    state = fold([e for _, e in await bus.history("20261203T010000Z-commit001")])
    assert state.status is ev.RunStatus.COMMITTING and state.manifest is not None
    assert s.open.exports() == {"orders"}
