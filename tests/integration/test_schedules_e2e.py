"""Schedules and priorities through the real stack (nats-server and every service as
processes): a schedule firing on time under a controllable clock (SLUICEWAY_CLOCK_FILE), and
a high-priority run overtaking a low-priority backfill on a saturated worker."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sluiceway.cli.main import main as cli_main
from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import terminal_run

pytestmark = pytest.mark.integration

ROWS = 30_000
CONFIG = """
exports:
  - name: {name}
    source: {{engine: sqlite, path: {db}}}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    destination: {dest}
{extra}"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "items.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    con.executemany(
        "INSERT INTO items VALUES (?, ?)", ((i, f"item {i}") for i in range(1, ROWS + 1))
    )
    con.commit()
    con.close()
    return path


@pytest.fixture
def clock(tmp_path: Path) -> Path:
    path = tmp_path / "clock"
    path.write_text("2026-12-03T01:59:00+00:00")
    return path


@pytest.fixture
def stack(tmp_path: Path, nats_server: LocalNats, namespace: str, clock: Path) -> Iterator[Stack]:
    started = start_stack(
        tmp_path / "state",
        workers=1,
        nats_url=nats_server.url,
        env={
            **os.environ,
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_CLOCK_FILE": str(clock),
            "SLUICEWAY_SCHEDULER_TICK_S": "0.2",
        },
    )
    yield started
    started.stop()


def _text(name: str, db: Path, dest: Path, chunk_size: int, **extra: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    return CONFIG.format(name=name, db=db, dest=dest, chunk_size=chunk_size, extra=lines)


async def _runs(
    tracker: tracker_pb2_grpc.TrackerStub, *statuses: int
) -> list[tracker_pb2.RunSummary]:
    resp = await tracker.ListRuns(tracker_pb2.ListRunsRequest(statuses=list(statuses)))
    return list(resp.runs)


async def _cli(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    addrs = ["--control", stack.state.control_addr, "--tracker", stack.state.tracker_addr]
    addrs += ["--state-dir", stack.state.state_dir]  # where the CLI finds the stack's token
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, [*argv, *addrs])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


async def test_a_schedule_fires_on_time_and_runs_the_export(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
    db: Path,
    dest: Path,
    clock: Path,
    tmp_path: Path,
) -> None:
    _, tracker = stubs
    cfg = tmp_path / "hourly.yaml"
    cfg.write_text(_text("hourly", db, dest, 10_000, schedule='"0 * * * *"', priority="high"))
    [info] = json.loads(await _cli(stack, capsys, "schedule", "apply", "-c", str(cfg), "--json"))
    assert (info["export"], info["change"], info["cron"], info["priority"]) == (
        "hourly",
        "installed",
        "0 * * * *",
        "high",
    )
    assert info["next"][:2] == ["2026-12-03T02:00:00Z", "2026-12-03T03:00:00Z"]

    [upcoming] = await eventually(
        lambda: _runs(tracker, events_pb2.RUN_STATUS_SCHEDULED), timeout_s=30, what="scheduled"
    )
    assert upcoming.scheduled_at.ToJsonString() == "2026-12-03T02:00:00Z"
    assert upcoming.priority == ev.PRIORITY_HIGH
    assert upcoming.waiting_reason == "scheduled for 2026-12-03T02:00:00+00:00"
    listed_upcoming = await _cli(stack, capsys, "runs", "--upcoming")
    assert upcoming.run_id in listed_upcoming and "SCHEDULED" in listed_upcoming

    clock.write_text("2026-12-03T02:00:01+00:00")  # the occurrence's time comes
    run = await eventually(
        lambda: terminal_run(tracker, upcoming.run_id), timeout_s=90, what="scheduled run ended"
    )
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    assert (run.total_rows, run.scheduled_at.ToJsonString()) == (ROWS, "2026-12-03T02:00:00Z")
    assert (dest / "hourly" / "runs" / run.run_id / "_SUCCESS").exists()
    journal = (await tracker.GetRun(tracker_pb2.GetRunRequest(run_id=run.run_id))).journal
    assert [j.kind for j in journal[:4]] == ["scheduled", "ready", "requested", "plan_resolved"]
    # the next occurrence is already on the log, ahead of its time
    [following] = await eventually(
        lambda: _runs(tracker, events_pb2.RUN_STATUS_SCHEDULED), timeout_s=30, what="next"
    )
    assert following.scheduled_at.ToJsonString() == "2026-12-03T03:00:00Z"
    [listed] = json.loads(await _cli(stack, capsys, "schedule", "list", "--next", "2", "--json"))
    assert listed["next"] == ["2026-12-03T03:00:00Z", "2026-12-03T04:00:00Z"]
    # an invalid schedule is refused by the CLI, naming the field
    cfg.write_text(_text("hourly", db, dest, 10_000, schedule='"0 25 * * *"'))
    code = await asyncio.to_thread(
        cli_main, ["schedule", "apply", "-c", str(cfg), "--control", stack.state.control_addr]
    )
    assert code == 1 and "field 'schedule'" in capsys.readouterr().err


async def test_a_high_priority_run_overtakes_a_low_priority_backfill(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    db: Path,
    dest: Path,
) -> None:
    control, tracker = stubs
    backfill_doc = control_pb2.ConfigDocument(
        text=_text("backfill", db, dest, 300, priority="low"), export_name="backfill"
    )
    backfill = await control.SubmitRun(control_pb2.SubmitRunRequest(config=backfill_doc))

    async def backfill_started() -> bool:
        try:
            run = await tracker.GetRun(tracker_pb2.GetRunRequest(run_id=backfill.run_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False  # the tracker has not projected the request yet
            raise
        return run.chunks_completed >= 2

    await eventually(backfill_started, timeout_s=60, what="backfill under way")
    hot_doc = control_pb2.ConfigDocument(text=_text("hot", db, dest, 10_000), export_name="hot")
    hot = await control.SubmitRun(
        control_pb2.SubmitRunRequest(config=hot_doc, priority=ev.PRIORITY_HIGH)
    )
    hot_run = await eventually(
        lambda: terminal_run(tracker, hot.run_id), timeout_s=120, what="hot run ended"
    )
    at_hot_end = await tracker.GetRun(tracker_pb2.GetRunRequest(run_id=backfill.run_id))
    back_run = await eventually(
        lambda: terminal_run(tracker, backfill.run_id), timeout_s=180, what="backfill ended"
    )
    print(
        f"priority: high run {hot_run.duration_ms} ms; backfill {back_run.duration_ms} ms, "
        f"{at_hot_end.chunks_completed}/{back_run.chunks_total} chunks done when the high run ended"
    )
    assert hot_run.status == back_run.status == events_pb2.RUN_STATUS_SUCCEEDED
    assert (hot_run.total_rows, back_run.total_rows) == (ROWS, ROWS)
    assert back_run.chunks_total == ROWS // 300
    # the high-priority run finished first, while most of the backfill still waited
    assert hot_run.finished_at.ToDatetime() < back_run.finished_at.ToDatetime()
    assert at_hot_end.chunks_completed < back_run.chunks_total // 2, at_hot_end.chunks_completed
    assert (hot_run.priority, back_run.priority) == (ev.PRIORITY_HIGH, ev.PRIORITY_LOW)
    # the effective priority each chunk was taken with is on its events and in the read model
    hot_chunks = (await tracker.ListChunks(tracker_pb2.ListChunksRequest(run_id=hot.run_id))).chunks
    assert {c.priority for c in hot_chunks} == {ev.PRIORITY_HIGH}
    back_chunks = (
        await tracker.ListChunks(tracker_pb2.ListChunksRequest(run_id=backfill.run_id))
    ).chunks
    assert min(c.priority for c in back_chunks) == ev.PRIORITY_LOW


async def test_incremental_submissions_of_one_export_run_one_at_a_time(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    db: Path,
    dest: Path,
) -> None:
    control, tracker = stubs
    text = CONFIG.format(name="feed", db=db, dest=dest, chunk_size=1_000, extra="").replace(
        "mode: chunked", "mode: incremental\n    cursor_column: id"
    )
    doc = control_pb2.ConfigDocument(text=text, export_name="feed")
    first = await control.SubmitRun(control_pb2.SubmitRunRequest(config=doc))
    # a second incremental run would start from the same committed cursor: refused, naming the
    # run that holds the export, and nothing appended
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await control.SubmitRun(control_pb2.SubmitRunRequest(config=doc))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"its run {first.run_id} has not ended" in (refused.value.details() or "")
    done = await eventually(
        lambda: terminal_run(tracker, first.run_id), timeout_s=120, what="first run ended"
    )
    assert (done.status, done.total_rows) == (events_pb2.RUN_STATUS_SUCCEEDED, ROWS)
    # once it has ended, the next one is accepted and starts from its cursor: nothing new
    second = await control.SubmitRun(control_pb2.SubmitRunRequest(config=doc))
    after = await eventually(
        lambda: terminal_run(tracker, second.run_id), timeout_s=120, what="second run ended"
    )
    assert after.status == events_pb2.RUN_STATUS_SKIPPED, after.error_message
    runs = await tracker.ListRuns(tracker_pb2.ListRunsRequest(export_name="feed"))
    assert sorted(r.run_id for r in runs.runs) == sorted([first.run_id, second.run_id])
