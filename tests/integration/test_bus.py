"""The bus against a real nats-server: dedup ids, the once-only check, history reads."""

from __future__ import annotations

from datetime import UTC, datetime

from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id


def _event(run_id: str, body: ev.Body) -> ev.RunEvent:
    return ev.RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name="orders",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        body=body,
    )


async def test_publishing_an_event_twice_stores_it_once(bus: Bus) -> None:
    e = _event("r1", ev.ChunkStarted(chunk_index=0, attempt=1))
    first = await bus.append(e)
    second = await bus.append(e)
    assert not first.duplicate and second.duplicate
    assert second.seq == first.seq
    assert [seq for seq, _ in await bus.history("r1")] == [first.seq]


async def test_a_second_manifest_committed_for_a_run_is_refused(bus: Bus) -> None:
    one = _event("r2", ev.ManifestCommitted(manifest_uri="file:///a", row_count=1))
    # a racing replica: same kind, different content, hence a different publish
    other = ev.RunEvent(
        **{
            **one.__dict__,
            "event_id": "r2/manifest_committed/other",
            "body": ev.ManifestCommitted(manifest_uri="file:///b", row_count=2),
        }
    )
    first = await bus.append(one)
    second = await bus.append(other)
    assert not first.conflict
    assert second.conflict and second.seq == first.seq
    history = await bus.history("r2")
    assert len(history) == 1
    assert history[0][1].body == one.body


async def test_history_returns_one_run_in_stream_order(bus: Bus) -> None:
    bodies = [ev.ChunkStarted(chunk_index=i, attempt=1) for i in range(5)]
    for b in bodies:
        await bus.append(_event("r3", b))
    await bus.append(_event("other", bodies[0]))
    history = await bus.history("r3")
    assert [e.body for _, e in history] == bodies
    assert [s for s, _ in history] == sorted(s for s, _ in history)
    assert await bus.history("nothing-here") == []


async def test_an_attempt_is_claimed_by_one_execution_only(bus: Bus) -> None:
    import dataclasses

    started = _event("r4", ev.ChunkStarted(chunk_index=3, attempt=1))
    mine = dataclasses.replace(started, producer=ev.Producer("worker", "w-1"))
    theirs = dataclasses.replace(started, producer=ev.Producer("worker", "w-2"))
    assert await bus.claim(mine, 0)
    assert await bus.claim(mine, 0)  # my own retried publish: still mine
    assert not await bus.claim(theirs, 0)  # same slot, same event id, another execution
    last = await bus.last_start("r4", 3)
    assert last is not None and last[1] == 1
    # the next attempt is claimed against the last start; a stale expectation loses
    second = dataclasses.replace(
        theirs, event_id="r4/chunk_started/3/2", body=ev.ChunkStarted(chunk_index=3, attempt=2)
    )
    assert not await bus.claim(second, 0)
    assert await bus.claim(second, last[0])
    assert await bus.last_start("r4", 3) == ((await bus.history("r4"))[-1][0], 2)
    assert await bus.last_start("r4", 4) is None


def _commit(run_id: str, export: str, high: str) -> ev.RunEvent:
    body = ev.ManifestCommitted(cursor_column="updated_at", cursor_high=high)
    return ev.RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name=export,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        body=body,
    )


def _plan(run_id: str, export: str, column: str) -> ev.RunEvent:
    body = ev.PlanResolved(strategy="full", schema=(ev.SchemaField(column, "int64", False),))
    return ev.RunEvent(
        event_id(run_id, body), run_id, export, datetime(2026, 1, 1, tzinfo=UTC), body
    )


async def test_the_export_state_is_one_direct_get_and_only_moves_forward(bus: Bus) -> None:
    assert await bus.last_commit("shop.orders") is None
    for run_id, export, high in (
        ("r1", "shop.orders", "10"),
        ("r2", "shop~other", "99"),  # '~' never occurs in a real name
        ("r3", "shop_orders", "77"),  # nor does '.' map to '_'
        ("r4", "shop.orders", "20"),
    ):
        await bus.append(_plan(run_id, export, f"c_{run_id}"))
        await bus.append(_commit(run_id, export, high))
    await bus.append(_event("r5", ev.ChunkStarted(chunk_index=0, attempt=1)))
    assert await bus.last_commit("shop.orders") is None  # the run stream alone is not state
    for run_id, export in (("r4", "shop.orders"), ("r3", "shop_orders"), ("r2", "shop~other")):
        await bus.record_commit(run_id, export)
    await bus.record_commit("r1", "shop.orders")  # late, and older: the state stays at r4
    last = await bus.last_commit("shop.orders")
    assert last is not None and last.run_id == "r4"
    assert isinstance(last.body, ev.ManifestCommitted) and last.body.cursor_high == "20"
    baseline = await bus.baseline("shop.orders")
    assert baseline is not None and isinstance(baseline.body, ev.PlanResolved)
    assert baseline.run_id == "r4" and baseline.body.schema[0].name == "c_r4"
    other = await bus.last_commit("shop_orders")
    assert other is not None and other.run_id == "r3"
    # one message per subject: recording again stores nothing new
    await bus.record_commit("r4", "shop.orders")
    info = await bus.js.stream_info(bus.names.state_stream)
    assert info.state.messages == 6  # commit and baseline of three exports


async def test_a_backfill_fills_the_export_state_from_the_run_stream_once(bus: Bus) -> None:
    for run_id, high in (("b1", "1"), ("b2", "2")):
        await bus.append(_plan(run_id, "orders", f"c_{run_id}"))
        await bus.append(_commit(run_id, "orders", high))
    at = datetime(2026, 1, 1, 6, tzinfo=UTC)
    scheduled = ev.RunEvent(
        "s1", "s1", "orders", at, ev.RunScheduled(scheduled_at=at, cron="0 6 * * *")
    )
    await bus.append(scheduled)
    assert await bus.backfill_state() == 2  # the latest commit, the latest occurrence
    last = await bus.last_commit("orders")
    assert last is not None and last.run_id == "b2"
    baseline = await bus.baseline("orders")
    assert baseline is not None and baseline.run_id == "b2"
    occurrence = await bus.last_scheduled("orders")
    assert occurrence is not None and occurrence.run_id == "s1"
    await bus.append(_commit("b3", "orders", "3"))
    assert await bus.backfill_state() == 0  # done once: later commits are the committer's
    last = await bus.last_commit("orders")
    assert last is not None and last.run_id == "b2"
