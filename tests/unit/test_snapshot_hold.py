"""consistent_snapshot without a database: the planner hands the hold to the keeper only when
the run's tasks will import it, and the keeper releases it when the run ends or at its limit."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from sluiceway.common.config import ConfigError, load_text
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import fold
from sluiceway.common.sources.base import Introspection
from sluiceway.planner.adapters.snapshots import SnapshotKeeper
from sluiceway.planner.app import Planner
from tests.support.eventually import eventually
from tests.unit.test_planner_decisions import INTRO, SPEC, T0, FakeLog, FakeSource, _e

SNAP_SPEC = dataclasses.replace(SPEC, consistent_snapshot=True)


class FakeHold:
    def __init__(self, snapshot_id: str = "00000003-0000001B-1") -> None:
        self.snapshot_id = snapshot_id
        self.released = 0
        self.session_alive = True

    def alive(self) -> bool:
        return self.session_alive and not self.released

    def release(self) -> None:
        self.released += 1


class SnapshotSource(FakeSource):
    """A source that exports a snapshot before it introspects."""

    def __init__(self, intro: Introspection | Exception) -> None:
        super().__init__(intro)
        self.hold = FakeHold()
        self.labels: list[str] = []

    def export_snapshot(self, label: str) -> str:
        self.labels.append(label)
        return self.hold.snapshot_id

    def hold_snapshot(self) -> FakeHold:
        return self.hold


class RecordingKeeper:
    def __init__(self) -> None:
        self.kept: dict[str, FakeHold] = {}

    def keep(self, run_id: str, hold: FakeHold) -> None:
        self.kept[run_id] = hold


def _with_keeper(log: FakeLog, source: FakeSource, keeper: RecordingKeeper | None) -> Planner:
    return Planner(
        log,
        producer=ev.Producer("planner", "test"),
        source_factory=lambda spec: source,
        env={},
        clock=lambda: T0 + timedelta(seconds=5),
        entropy=lambda n: b"\x01\x02\x03\x04",
        keeper=keeper,
    )


async def test_the_plan_and_every_task_name_the_snapshot_and_the_keeper_holds_it() -> None:
    log, source, keeper = FakeLog(), SnapshotSource(INTRO), RecordingKeeper()
    planner = _with_keeper(log, source, keeper)
    requested = _e("r1", ev.RunRequested(spec=SNAP_SPEC))
    await log.append(requested)
    await planner.handle(requested)
    (plan,) = [b for b in log.bodies("r1") if isinstance(b, ev.PlanResolved)]
    assert plan.snapshot_id == "00000003-0000001B-1"
    assert {t.snapshot_id for t in log.tasks.values()} == {plan.snapshot_id}
    assert keeper.kept == {"r1": source.hold} and source.hold.released == 0
    assert source.labels == ["sluiceway-snapshot r1"]
    # the snapshot does not change the plan's identity (a reviewed dry run still matches)
    dry = _with_keeper(FakeLog(), SnapshotSource(INTRO), keeper)
    dry_plan, _ = await dry.dry_run(SNAP_SPEC)
    assert dry_plan.snapshot_id == "" and dry_plan.plan_id == plan.plan_id


async def test_a_run_that_fails_to_plan_releases_its_snapshot() -> None:
    log, source, keeper = FakeLog(), SnapshotSource(INTRO), RecordingKeeper()
    planner = _with_keeper(log, source, keeper)
    bad = dataclasses.replace(SNAP_SPEC, columns=("nope",))  # an unknown column: PlanError
    requested = _e("r1", ev.RunRequested(spec=bad))
    await log.append(requested)
    await planner.handle(requested)
    assert isinstance(log.bodies("r1")[-1], ev.RunCompleted)
    assert keeper.kept == {} and source.hold.released == 1 and log.tasks == {}


async def test_a_run_planned_by_another_replica_releases_this_replicas_snapshot() -> None:
    log, keeper = FakeLog(), RecordingKeeper()
    requested = _e("r1", ev.RunRequested(spec=SNAP_SPEC))
    await log.append(requested)
    first = SnapshotSource(INTRO)
    await _with_keeper(log, first, keeper).handle(requested)
    second = SnapshotSource(INTRO)
    second.hold = FakeHold("00000004-0000002C-1")
    # the second replica folded the run before the first one's plan was stored
    await _with_keeper(log, second, keeper)._plan(fold([requested], "r1"), 1)
    assert keeper.kept == {"r1": first.hold} and first.hold.released == 0
    assert second.hold.released == 1
    assert {t.snapshot_id for t in log.tasks.values()} == {first.hold.snapshot_id}


async def test_a_bus_error_while_appending_the_plan_releases_the_snapshot() -> None:
    class DownLog(FakeLog):
        async def append(self, event: ev.RunEvent):  # type: ignore[no-untyped-def]
            if isinstance(event.body, ev.PlanResolved):
                raise ConnectionError("nats away")
            return await super().append(event)

    log, source, keeper = DownLog(), SnapshotSource(INTRO), RecordingKeeper()
    requested = _e("r1", ev.RunRequested(spec=SNAP_SPEC))
    await log.append(requested)
    with pytest.raises(ConnectionError):  # the request is delivered again
        await _with_keeper(log, source, keeper).handle(requested)
    assert keeper.kept == {} and source.hold.released == 1


async def test_without_a_keeper_a_consistent_snapshot_run_fails_to_plan() -> None:
    log = FakeLog()
    planner = _with_keeper(log, SnapshotSource(INTRO), None)
    requested = _e("r1", ev.RunRequested(spec=SNAP_SPEC))
    await log.append(requested)
    await planner.handle(requested)
    (done,) = [b for b in log.bodies("r1") if isinstance(b, ev.RunCompleted)]
    assert "cannot hold snapshots" in done.error_message


async def test_the_keeper_releases_a_hold_once_the_run_has_ended() -> None:
    ended: set[str] = set()

    async def run_stopped(run_id: str) -> str:
        return "the run ended SUCCEEDED" if run_id in ended else ""

    keeper = SnapshotKeeper(run_stopped, poll_s=0.01)
    hold = FakeHold()
    keeper.keep("r1", hold)
    await asyncio.sleep(0.05)
    assert hold.released == 0 and keeper.held() == ["r1"]
    ended.add("r1")
    await eventually(lambda: hold.released == 1, timeout_s=5, what="released")
    assert keeper.held() == []


async def test_the_keeper_releases_a_hold_at_its_maximum_and_on_close() -> None:
    now = [0.0]

    async def never(run_id: str) -> str:
        return ""

    keeper = SnapshotKeeper(never, poll_s=0.01, max_hold_s=100, clock=lambda: now[0])
    expiring, other = FakeHold(), FakeHold()
    keeper.keep("r1", expiring)
    await asyncio.sleep(0.05)
    assert expiring.released == 0
    now[0] = 100.0
    await eventually(lambda: expiring.released == 1, timeout_s=5, what="released at the limit")
    now[0] = 0.0
    keeper = SnapshotKeeper(never, poll_s=0.01, clock=lambda: now[0])
    keeper.keep("r2", other)
    await keeper.close()
    assert other.released == 1 and keeper.held() == []


async def test_the_keeper_keeps_holding_while_the_log_cannot_be_read() -> None:
    calls = [0]

    async def flaky(run_id: str) -> str:
        calls[0] += 1
        if calls[0] < 3:
            raise ConnectionError("nats away")
        return "the run ended FAILED"

    keeper = SnapshotKeeper(flaky, poll_s=0.01)
    hold = FakeHold()
    keeper.keep("r1", hold)
    await eventually(lambda: hold.released == 1, timeout_s=5, what="released")
    assert calls[0] == 3


def test_consistent_snapshot_is_refused_for_sqlite_by_name() -> None:
    text = """
sources:
  local: {engine: sqlite, path: shop.db}
exports:
  - name: snap
    source: local
    table: orders
    consistent_snapshot: true
    destination: out
"""
    with pytest.raises(ConfigError) as caught:
        load_text(text, base_dir="/base", file_name="x.yaml")
    assert caught.value.field == "consistent_snapshot"
    assert "field 'consistent_snapshot'" in str(caught.value)
    assert "PostgreSQL only" in str(caught.value)
