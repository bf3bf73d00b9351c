"""Planner decisions and flow: given events / then events, with an in-memory log and source."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sluiceway.common.bus import Appended, Names
from sluiceway.common.config import ConfigError
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import InvalidRunId, event_id
from sluiceway.common.domain.run import fold
from sluiceway.common.sources.base import Introspection, SourceError
from sluiceway.planner.app import ExportBusy, Planner, RunEnded, RunNotFound
from sluiceway.planner.domain.plan import (
    Ignore,
    NeedsPlan,
    PublishTasks,
    build_plan,
    decide_cancel,
    decide_request,
)
from tests.unit.histories import History

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA = (ev.SchemaField("id", "int64", False), ev.SchemaField("name", "string", True))
SPEC = ev.ExportSpec(
    name="orders",
    source=ev.SourceSpec(engine="sqlite", path="/data/shop.db"),
    table="orders",
    mode="chunked",
    chunk_column="id",
    chunk_size=10,
    format="parquet",
    compression="zstd",
    destination="/dest",
    batch_size=1000,
    max_attempts=3,
)
INTRO = Introspection(schema=SCHEMA, row_estimate=25, key_low="1", key_high="25")


def _e(run_id: str, body: ev.Body, t: int = 0) -> ev.RunEvent:
    return ev.RunEvent(event_id(run_id, body), run_id, "orders", T0 + timedelta(seconds=t), body)


class FakeLog:
    """Bus semantics that matter: dedup by event id, once-only facts per run."""

    def __init__(self) -> None:
        self.names = Names("test")
        self.events: list[ev.RunEvent] = []
        self.tasks: dict[str, ev.ChunkTask] = {}

    async def append(self, event: ev.RunEvent) -> Appended:
        for seq, e in enumerate(self.events, 1):
            if e.event_id == event.event_id:
                return Appended(seq=seq, duplicate=True)
            if (
                type(event.body) in ev.ONCE_PER_RUN
                and e.run_id == event.run_id
                and e.kind == event.kind
            ):
                return Appended(seq=seq, conflict=True)
        self.events.append(event)
        return Appended(seq=len(self.events))

    async def history(self, run_id: str) -> list[tuple[int, ev.RunEvent]]:
        return [(i, e) for i, e in enumerate(self.events, 1) if e.run_id == run_id]

    async def publish_task(self, task: ev.ChunkTask, msg_id: str) -> Appended:
        self.tasks.setdefault(msg_id, task)
        return Appended(seq=len(self.tasks))

    async def last_commit(self, export_name: str) -> ev.RunEvent | None:
        commits = [
            e
            for e in self.events
            if isinstance(e.body, ev.ManifestCommitted) and e.export_name == export_name
        ]
        return commits[-1] if commits else None

    async def baseline(self, export_name: str) -> ev.RunEvent | None:
        last = await self.last_commit(export_name)
        plans = [
            e
            for e in self.events
            if last is not None and e.run_id == last.run_id and isinstance(e.body, ev.PlanResolved)
        ]
        return plans[-1] if plans else None

    async def last_on_subject(self, subject: str) -> tuple[int, ev.RunEvent] | None:
        found = [
            (i, e)
            for i, e in enumerate(self.events, 1)
            if self.names.run_subject(e.run_id, e.kind) == subject
        ]
        return found[-1] if found else None

    def bodies(self, run_id: str) -> list[ev.Body]:
        return [e.body for e in self.events if e.run_id == run_id]


class FakeSource:
    def __init__(self, intro: Introspection | Exception) -> None:
        self.intro = intro
        self.closed = 0

    def introspect(self, spec: ev.ExportSpec) -> Introspection:
        if isinstance(self.intro, Exception):
            raise self.intro
        return self.intro

    def read(self, spec, rng, schema):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def count(self, spec: ev.ExportSpec, rng: ev.ChunkRange | None) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self.closed += 1


def _planner(log: FakeLog, source: FakeSource, env: dict[str, str] | None = None) -> Planner:
    return Planner(
        log,
        producer=ev.Producer("planner", "test"),
        source_factory=lambda spec: source,
        env=env or {},
        clock=lambda: T0 + timedelta(seconds=5),
        entropy=lambda n: b"\x01\x02\x03\x04",
    )


# ---- pure decisions ----------------------------------------------------------------------------


def test_plan_is_deterministic_and_names_its_content() -> None:
    plan, warnings = build_plan(SPEC, INTRO)
    again, _ = build_plan(SPEC, dataclasses.replace(INTRO, row_estimate=999))
    assert plan.plan_id == again.plan_id and plan.plan_id.startswith("plan-")
    moved, _ = build_plan(SPEC, dataclasses.replace(INTRO, key_high="26"))
    assert moved.plan_id != plan.plan_id
    assert [(c.start_key, c.end_key, c.end_inclusive) for c in plan.chunks] == [
        ("1", "11", False),
        ("11", "21", False),
        ("21", "25", True),
    ]
    assert plan.schema == SCHEMA and plan.schema_fingerprint.startswith("xxh3:")
    assert (plan.key_low, plan.key_high, plan.source_table) == ("1", "25", "orders")
    assert warnings == []


def test_plan_warns_when_chunk_count_exceeds_the_keys() -> None:
    spec = dataclasses.replace(SPEC, chunk_size=0, chunk_count=50)
    plan, warnings = build_plan(spec, INTRO)
    assert len(plan.chunks) == 25
    assert [w.rule for w in warnings] == ["chunk_count_reduced"]


def test_a_request_without_a_plan_needs_planning() -> None:
    state = fold([_e("r1", ev.RunRequested(spec=SPEC))])
    assert decide_request(state) == NeedsPlan()


def test_a_planned_request_republishes_only_unstarted_chunks() -> None:
    plan, _ = build_plan(SPEC, INTRO)
    state = fold(
        [
            _e("r1", ev.RunRequested(spec=SPEC)),
            _e("r1", plan, 1),
            _e("r1", ev.ChunkStarted(chunk_index=1, attempt=1), 2),
        ]
    )
    assert decide_request(state) == PublishTasks(plan=plan, chunk_indexes=(0, 2))


def test_a_terminal_run_is_ignored() -> None:
    state = fold(
        [
            _e("r1", ev.RunRequested(spec=SPEC)),
            _e("r1", ev.RunCompleted(status=ev.RunStatus.FAILED), 1),
        ]
    )
    assert isinstance(decide_request(state), Ignore)
    assert decide_cancel(state, T0) is None


def test_cancel_of_a_live_run_completes_it_canceled() -> None:
    state = fold(
        [
            _e("r1", ev.RunRequested(spec=SPEC)),
            _e("r1", ev.CancelRequested(reason="oops"), 1),
        ]
    )
    done = decide_cancel(state, T0 + timedelta(seconds=2))
    assert done is not None
    assert done.status is ev.RunStatus.CANCELED and done.duration_ms == 2000
    assert "oops" in done.error_message


def test_a_cancel_after_the_manifest_was_committed_is_too_late() -> None:
    h = History().planned(1).chunk_done(0).add(ev.ManifestCommitted(row_count=10))
    h.add(ev.CancelRequested(reason="late"))
    state = fold(h.events)
    assert state.manifest is not None and state.cancel is not None
    assert decide_cancel(state, T0) is None


# ---- the flow, against fakes -------------------------------------------------------------------


async def test_submit_appends_run_requested_without_secrets() -> None:
    log = FakeLog()
    spec = dataclasses.replace(
        SPEC, source=ev.SourceSpec(engine="postgres", url_env="SHOP_URL"), table="orders"
    )
    planner = _planner(log, FakeSource(INTRO), env={"SHOP_URL": "postgresql://u:pw@h/db"})
    checked = planner.check_spec(spec)
    run_id, seq = await planner.submit(checked, requested_by="me", options={"k": "v"})
    assert run_id == "20260301T120005Z-01020304" and seq == 1
    (body,) = log.bodies(run_id)
    assert isinstance(body, ev.RunRequested)
    assert body.spec.source.url_env == "SHOP_URL" and body.options == {"k": "v"}
    assert "pw" not in repr(log.events)


def test_a_bad_spec_names_the_export_and_the_field() -> None:
    planner = _planner(FakeLog(), FakeSource(INTRO), env={"SHOP_URL": "postgresql://h/db"})
    spec = dataclasses.replace(SPEC, source=ev.SourceSpec(engine="postgres", url_env="SHOP_URL"))
    with pytest.raises(ConfigError, match="export 'orders': field 'mode'"):
        planner.check_spec(dataclasses.replace(spec, mode="fulll"))
    with pytest.raises(ConfigError, match=r"field 'source\.url_env'"):
        planner.check_spec(
            dataclasses.replace(spec, source=ev.SourceSpec(engine="postgres", url_env="NOT_SET"))
        )


async def test_a_requested_run_is_planned_and_its_tasks_published_once() -> None:
    log, source = FakeLog(), FakeSource(INTRO)
    planner = _planner(log, source)
    requested = _e("r1", ev.RunRequested(spec=SPEC))
    await log.append(requested)
    await planner.handle(requested)
    await planner.handle(requested)  # a redelivery: same plan, same task ids
    bodies = log.bodies("r1")
    plans = [b for b in bodies if isinstance(b, ev.PlanResolved)]
    assert len(plans) == 1 and len(plans[0].chunks) == 3
    assert sorted(log.tasks) == ["r1/task/0", "r1/task/1", "r1/task/2"]
    task = log.tasks["r1/task/2"]
    assert task.range.end_inclusive and task.chunk_count == 3 and task.plan_id == plans[0].plan_id
    assert source.closed == 1


async def test_a_missing_table_fails_the_run_with_a_redacted_message() -> None:
    log = FakeLog()
    error = SourceError("no such table orders at postgresql://bob:hunter2@db/x", retryable=False)
    planner = _planner(log, FakeSource(error))
    requested = _e("r1", ev.RunRequested(spec=SPEC))
    await log.append(requested)
    await planner.handle(requested)
    (done,) = [b for b in log.bodies("r1") if isinstance(b, ev.RunCompleted)]
    assert done.status is ev.RunStatus.FAILED
    assert "no such table" in done.error_message and "hunter2" not in done.error_message
    assert log.tasks == {}


async def test_a_transient_source_error_is_retried_before_failing() -> None:
    log = FakeLog()
    planner = _planner(log, FakeSource(SourceError("connection refused", retryable=True)))
    requested = _e("r1", ev.RunRequested(spec=SPEC))
    await log.append(requested)
    with pytest.raises(SourceError):
        await planner.handle(requested, delivered=1)
    assert len(log.bodies("r1")) == 1
    await planner.handle(requested, delivered=3)
    assert isinstance(log.bodies("r1")[-1], ev.RunCompleted)


async def test_a_pinned_plan_that_no_longer_matches_fails_the_run() -> None:
    log = FakeLog()
    planner = _planner(log, FakeSource(INTRO))
    requested = _e("r1", ev.RunRequested(spec=SPEC, plan_id="plan-0000000000000000"))
    await log.append(requested)
    await planner.handle(requested)
    (done,) = [b for b in log.bodies("r1") if isinstance(b, ev.RunCompleted)]
    assert "source changed" in done.error_message


async def test_cancel_checks_the_id_and_the_run() -> None:
    log = FakeLog()
    planner = _planner(log, FakeSource(INTRO))
    with pytest.raises(InvalidRunId):
        await planner.cancel("bad id!")
    with pytest.raises(RunNotFound):
        await planner.cancel("nope")
    await log.append(_e("r1", ev.RunRequested(spec=SPEC)))
    seq = await planner.cancel("r1", reason="enough")
    assert seq == 2
    cancel = log.events[-1]
    await planner.handle(cancel)
    done = log.bodies("r1")[-1]
    assert isinstance(done, ev.RunCompleted) and done.status is ev.RunStatus.CANCELED
    # a second cancel of the ended run appends nothing
    with pytest.raises(RunEnded, match="already ended CANCELED"):
        await planner.cancel("r1", reason="again")
    assert log.bodies("r1")[-1] == done


async def test_an_incremental_submission_waits_for_no_one_and_is_refused_while_held() -> None:
    """The check and the append are one step: the second of two concurrent submissions sees
    the first (the holding run is read from what the log holds, as the scheduler's feed does)."""
    log = FakeLog()
    seen: list[str] = []

    async def holding_run(export: str) -> str:
        seen.append(export)
        return next((e.run_id for e in log.events if e.export_name == export), "")

    draws = iter(range(1, 100))
    planner = Planner(
        log,
        producer=ev.Producer("planner", "test"),
        source_factory=lambda spec: FakeSource(INTRO),
        env={},
        clock=lambda: T0,
        entropy=lambda n: next(draws).to_bytes(n, "big"),
        holding_run=holding_run,
    )
    incremental = dataclasses.replace(SPEC, mode="incremental", cursor_column="id")
    first, second = await asyncio.gather(
        planner.submit(incremental), planner.submit(incremental), return_exceptions=True
    )
    assert isinstance(first, tuple), first
    assert isinstance(second, ExportBusy)
    assert f"its run {first[0]} has not ended" in str(second)
    assert [type(e.body) for e in log.events] == [ev.RunRequested]
    # other modes are not held back, and are not checked
    await planner.submit(SPEC)
    assert seen == ["orders", "orders"] and len(log.events) == 2
