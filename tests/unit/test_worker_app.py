"""The worker flow against in-memory fakes: what it appends, in which order, how it settles."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.sources.base import SourceError
from sluiceway.worker.app import ChunkWorker
from sluiceway.worker.domain.decide import ChunkExport, Part

from .histories import SPEC

TASK = ev.ChunkTask(
    run_id="r1",
    plan_id="p1",
    spec=SPEC,
    range=ev.ChunkRange(index=4, start_key="400", end_key="500"),
    chunk_count=8,
)


@dataclass
class FakeLog:
    events: list[ev.RunEvent] = field(default_factory=list)

    async def append(self, event: ev.RunEvent) -> None:
        self.events.append(event)

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@dataclass
class FakeDelivery:
    data: bytes
    delivered: int = 1
    settled: list[tuple[str, float]] = field(default_factory=list)
    heartbeats: int = 0

    @property
    def attempt(self) -> int:
        return self.delivered

    async def ack(self) -> None:
        self.settled.append(("ack", 0.0))

    async def nak(self, delay_s: float) -> None:
        self.settled.append(("nak", delay_s))

    async def term(self) -> None:
        self.settled.append(("term", 0.0))

    async def in_progress(self) -> None:
        self.heartbeats += 1


class FakeExporter:
    def __init__(self, result: ChunkExport | Exception, seconds: float = 0.0) -> None:
        self.result, self.seconds, self.calls = result, seconds, 0

    def export(self, task: ev.ChunkTask, attempt: int) -> ChunkExport:
        self.calls += 1
        time.sleep(self.seconds)  # runs in a thread, like the real one
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeProbe:
    def read(self) -> tuple[float, float]:
        return (100.0, 1.0)

    def usage(self, before: tuple[float, float]) -> ev.ResourceUsage:
        return ev.ResourceUsage(before[0], 120.0, before[1], 2.0)


PARTS = (
    Part("part-00004-0001-a1.parquet", 40, 400, 1, "xxh3:b"),
    Part("part-00004-0000-a1.parquet", 60, 600, 0, "xxh3:a"),
)


def _worker(log: FakeLog, exporter: FakeExporter, heartbeat_s: float = 10.0) -> ChunkWorker:
    return ChunkWorker(
        log,
        exporter,
        FakeProbe(),
        instance="w-1",
        heartbeat_s=heartbeat_s,
        consumer_max_deliver=10,
        clock=lambda: datetime(2026, 11, 22, tzinfo=UTC),
    )


async def test_files_are_recorded_before_the_chunk_completes_and_the_ack_comes_last() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    outcome = await _worker(log, FakeExporter(ChunkExport(PARTS, source_rows=100))).handle(delivery)
    assert log.kinds == ["chunk_started", "file_written", "file_written", "chunk_completed"]
    assert [e.body.part_index for e in log.events[1:3]] == [0, 1]  # type: ignore[union-attr]
    completed = log.events[-1].body
    assert completed == ev.ChunkCompleted(
        chunk_index=4, rows=100, files=2, attempt=1, source_rows=100, source_counted=True
    )
    assert log.events[-1].resources == ev.ResourceUsage(100.0, 120.0, 1.0, 2.0)
    assert delivery.settled == [("ack", 0.0)]
    assert outcome.action == "ack" and outcome.rows == 100


async def test_a_retryable_error_records_the_retry_and_naks_with_backoff() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK), delivered=1)
    error = SourceError("connection lost", retryable=True)
    await _worker(log, FakeExporter(error)).handle(delivery)
    assert log.kinds == ["chunk_started", "chunk_failed", "retry_attempted"]
    failed, retry = log.events[1].body, log.events[2].body
    assert isinstance(failed, ev.ChunkFailed) and failed.retryable
    assert isinstance(retry, ev.RetryAttempted) and retry.attempt == 2
    assert delivery.settled == [("nak", retry.backoff_ms / 1000)]
    assert retry.backoff_ms > 0


async def test_a_permanent_error_fails_the_chunk_and_terminates_the_task() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    await _worker(log, FakeExporter(SourceError("no such table", retryable=False))).handle(delivery)
    assert log.kinds == ["chunk_started", "chunk_failed"]
    assert log.events[-1].body == ev.ChunkFailed(4, "no such table", 1, False)
    assert delivery.settled == [("term", 0.0)]


async def test_an_unexpected_error_is_permanent_and_redacted() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    boom = RuntimeError("cannot reach postgresql://bob:hunter2@db/x")
    await _worker(log, FakeExporter(boom)).handle(delivery)
    failed = log.events[-1].body
    assert isinstance(failed, ev.ChunkFailed) and not failed.retryable
    assert "hunter2" not in failed.error and "RuntimeError" in failed.error
    assert delivery.settled == [("term", 0.0)]


async def test_the_last_attempt_of_the_budget_fails_for_good() -> None:
    log = FakeLog()
    delivery = FakeDelivery(codec.encode_task(TASK), delivered=SPEC.max_attempts)
    await _worker(log, FakeExporter(SourceError("lost", retryable=True))).handle(delivery)
    failed = log.events[-1].body
    assert isinstance(failed, ev.ChunkFailed) and not failed.retryable
    assert "attempt budget" in failed.error
    assert delivery.settled == [("term", 0.0)]


async def test_a_long_chunk_sends_heartbeats_while_it_reads() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    exporter = FakeExporter(ChunkExport(PARTS), seconds=0.35)
    await _worker(log, exporter, heartbeat_s=0.1).handle(delivery)
    assert delivery.heartbeats >= 2
    assert delivery.settled == [("ack", 0.0)]


async def test_a_poison_task_is_terminated_without_an_event() -> None:
    log, delivery = FakeLog(), FakeDelivery(b"\xff\xfe not a task")
    outcome = await _worker(log, FakeExporter(ChunkExport(()))).handle(delivery)
    assert log.events == [] and delivery.settled == [("term", 0.0)]
    assert outcome.action == "term"


async def test_a_bus_failure_while_recording_propagates_without_a_verdict() -> None:
    class DownLog(FakeLog):
        async def append(self, event: ev.RunEvent) -> None:
            if event.kind == "chunk_completed":
                raise ConnectionError("nats down")
            await super().append(event)

    log, delivery = DownLog(), FakeDelivery(codec.encode_task(TASK))
    try:
        await _worker(log, FakeExporter(ChunkExport(PARTS))).handle(delivery)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failure must reach the fetch loop, which naks")
    assert delivery.settled == []  # no ack: the task is redelivered
