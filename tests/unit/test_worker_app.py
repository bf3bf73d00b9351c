"""The worker flow against in-memory fakes: what it appends, in which order, how it settles."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluiceway.common import codec, metrics
from sluiceway.common.bus import Appended
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import new_event
from sluiceway.common.sources.base import SourceError
from sluiceway.worker.app import ChunkWorker
from sluiceway.worker.domain.decide import ChunkExport, Part, Stopped

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
    """The run stream of one run, with the stream's once-per-chunk ChunkCompleted check."""

    events: list[ev.RunEvent] = field(default_factory=list)

    async def append(self, event: ev.RunEvent) -> Appended:
        body = event.body
        if isinstance(body, ev.ChunkCompleted) and self._completed(body.chunk_index):
            return Appended(seq=0, conflict=True)
        self.events.append(event)
        return Appended(seq=len(self.events))

    def _completed(self, chunk: int) -> ev.ChunkCompleted | None:
        for e in self.events:
            if isinstance(e.body, ev.ChunkCompleted) and e.body.chunk_index == chunk:
                return e.body
        return None

    async def chunk_winner(self, run_id: str, chunk_index: int) -> int | None:
        done = self._completed(chunk_index)
        return None if done is None else done.attempt

    async def last_start(self, run_id: str, chunk_index: int) -> tuple[int, int] | None:
        starts = [
            (seq, e.body.attempt)
            for seq, e in enumerate(self.events, 1)
            if isinstance(e.body, ev.ChunkStarted) and e.body.chunk_index == chunk_index
        ]
        return starts[-1] if starts else None

    async def claim(self, event: ev.RunEvent, expected_last_seq: int) -> bool:
        assert isinstance(event.body, ev.ChunkStarted)
        last = await self.last_start(event.run_id, event.body.chunk_index)
        if (0 if last is None else last[0]) != expected_last_seq:
            return False
        await self.append(event)
        return True

    async def run_stopped(self, run_id: str) -> str:
        if any(isinstance(e.body, ev.RunCompleted) for e in self.events):
            return "the run ended"
        if any(isinstance(e.body, ev.CancelRequested) for e in self.events):
            return "the run is being canceled"
        return ""

    def add(self, body: ev.Body, attempt: int = 0) -> None:
        """A fact another process appended."""
        self.events.append(
            new_event(
                "r1", "orders", body, producer=ev.Producer("other", "x"), now=T, attempt=attempt
            )
        )

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@dataclass
class FakeDelivery:
    data: bytes
    delivered: int = 1
    settled: list[tuple[str, float]] = field(default_factory=list)
    heartbeats: int = 0
    headers: dict[str, str] | None = None

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
        self.set_aside_calls: list[int] = []

    def export(
        self, task: ev.ChunkTask, attempt: int, stop: threading.Event, phases: object = None
    ) -> ChunkExport:
        self.calls += 1
        time.sleep(self.seconds)  # runs in a thread, like the real one
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def set_aside(self, task: ev.ChunkTask, attempt: int) -> list[str]:
        self.set_aside_calls.append(attempt)
        return [p.file_name for p in PARTS]


class BatchesUntilStopped(FakeExporter):
    """Reads 'batches' until asked to stop, as the real reader does between batches."""

    def export(
        self, task: ev.ChunkTask, attempt: int, stop: threading.Event, phases: object = None
    ) -> ChunkExport:
        self.calls += 1
        for _ in range(200):  # at most 10 s
            if stop.is_set():
                raise Stopped(f"chunk {task.range.index}")
            time.sleep(0.05)
        raise AssertionError("the reader was never told to stop")


class FakeProbe:
    def read(self) -> tuple[float, float]:
        return (100.0, 1.0)

    def usage(self, before: tuple[float, float]) -> ev.ResourceUsage:
        return ev.ResourceUsage(before[0], 120.0, before[1], 2.0)


T = datetime(2026, 11, 22, tzinfo=UTC)
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
        stop_poll_s=0.05,
        clock=lambda: T,
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


class SlowLog(FakeLog):
    """A run stream whose reads wait, as they do while a cluster elects a stream leader."""

    async def run_stopped(self, run_id: str) -> str:
        await asyncio.sleep(0.35)
        return await super().run_stopped(run_id)


async def test_a_task_held_up_by_the_bus_before_its_read_still_sends_heartbeats() -> None:
    log, delivery = SlowLog(), FakeDelivery(codec.encode_task(TASK))
    await _worker(log, FakeExporter(ChunkExport(PARTS)), heartbeat_s=0.1).handle(delivery)
    assert delivery.heartbeats >= 2
    assert delivery.settled == [("ack", 0.0)]


async def test_a_poison_task_is_terminated_without_an_event() -> None:
    log, delivery = FakeLog(), FakeDelivery(b"\xff\xfe not a task")
    outcome = await _worker(log, FakeExporter(ChunkExport(()))).handle(delivery)
    assert log.events == [] and delivery.settled == [("term", 0.0)]
    assert outcome.action == "term"


async def test_a_bus_failure_while_recording_propagates_without_a_verdict() -> None:
    class DownLog(FakeLog):
        async def append(self, event: ev.RunEvent) -> Appended:
            if event.kind == "chunk_completed":
                raise ConnectionError("nats down")
            return await super().append(event)

    log, delivery = DownLog(), FakeDelivery(codec.encode_task(TASK))
    try:
        await _worker(log, FakeExporter(ChunkExport(PARTS))).handle(delivery)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failure must reach the fetch loop, which naks")
    assert delivery.settled == []  # no ack: the task is redelivered


async def test_a_redelivered_task_of_a_completed_chunk_is_acked_without_reading() -> None:
    # the first attempt completed but its ack was lost: nothing is read or appended again
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK), delivered=2)
    log.add(ev.ChunkCompleted(chunk_index=4, rows=100, files=2, attempt=1), attempt=1)
    exporter = FakeExporter(ChunkExport(PARTS))
    await _worker(log, exporter).handle(delivery)
    assert exporter.calls == 0 and log.kinds == ["chunk_completed"]
    assert delivery.settled == [("ack", 0.0)]


async def test_a_task_of_a_canceled_run_never_starts() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    log.add(ev.CancelRequested(reason="wrong table"))
    exporter = FakeExporter(ChunkExport(PARTS))
    outcome = await _worker(log, exporter).handle(delivery)
    assert exporter.calls == 0 and log.kinds == ["cancel_requested"]
    assert delivery.settled == [("ack", 0.0)] and "canceled" in outcome.error


async def test_a_running_chunk_stops_at_a_batch_boundary_when_the_run_is_canceled() -> None:
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK))
    exporter = BatchesUntilStopped(ChunkExport(()))
    worker = _worker(log, exporter)

    async def cancel_soon() -> None:
        await asyncio.sleep(0.2)
        log.add(ev.CancelRequested(reason="stop"))
        log.add(ev.RunCompleted(status=ev.RunStatus.CANCELED))

    canceller = asyncio.create_task(cancel_soon())
    started = time.monotonic()
    await worker.handle(delivery)
    await canceller
    assert time.monotonic() - started < 2.0
    assert log.kinds == ["chunk_started", "cancel_requested", "completed", "warning"]
    warning = log.events[-1].body
    assert isinstance(warning, ev.Warning) and warning.context == "stopped"
    assert "the run ended" in warning.message
    assert exporter.set_aside_calls == [1]  # whatever it wrote is moved aside
    assert delivery.settled == [("ack", 0.0)]


async def test_an_attempt_that_lost_the_race_sets_its_files_aside_and_says_so() -> None:
    # attempt 2 was delivered after ack_wait expired; attempt 1 completes while 2 reads
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK), delivered=2)

    class SlowExporter(FakeExporter):
        def export(
            self, task: ev.ChunkTask, attempt: int, stop: threading.Event, phases: object = None
        ) -> ChunkExport:
            log.add(ev.ChunkCompleted(chunk_index=4, rows=100, files=2, attempt=1), attempt=1)
            return super().export(task, attempt, stop)

    exporter = SlowExporter(ChunkExport(PARTS))
    await _worker(log, exporter).handle(delivery)
    assert log.kinds == ["chunk_started", "chunk_completed", "warning"]  # no FileWritten
    warning = log.events[-1].body
    assert isinstance(warning, ev.Warning) and warning.context == "fenced"
    assert "lost to attempt 1" in warning.message and "_quarantine/r1/" in warning.message
    assert exporter.set_aside_calls == [2]
    assert delivery.settled == [("ack", 0.0)]


async def test_a_completion_refused_by_the_stream_sets_the_files_aside() -> None:
    # both attempts passed the check; the stream keeps the first ChunkCompleted only
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK), delivered=2)

    class RacingLog(FakeLog):
        async def append(self, event: ev.RunEvent) -> Appended:
            if event.kind == "chunk_completed" and event.attempt == 2:
                self.add(ev.ChunkCompleted(chunk_index=4, rows=100, files=2, attempt=1), 1)
            return await super().append(event)

    log = RacingLog()
    exporter = FakeExporter(ChunkExport(PARTS))
    await _worker(log, exporter).handle(delivery)
    assert log.kinds[-2:] == ["chunk_completed", "warning"]
    assert [e.attempt for e in log.events if e.kind == "chunk_completed"] == [1]
    assert exporter.set_aside_calls == [2]
    assert delivery.settled == [("ack", 0.0)]


async def test_the_attempt_number_follows_the_log_not_only_the_delivery_count() -> None:
    # a crashed server handed the task out again as delivery 1, but attempt 1 already started
    log, delivery = FakeLog(), FakeDelivery(codec.encode_task(TASK), delivered=1)
    log.add(ev.ChunkStarted(chunk_index=4, attempt=1), attempt=1)
    await _worker(log, FakeExporter(ChunkExport(PARTS))).handle(delivery)
    started = [e.body for e in log.events if isinstance(e.body, ev.ChunkStarted)]
    assert [s.attempt for s in started] == [1, 2]
    completed = log.events[-1].body
    assert isinstance(completed, ev.ChunkCompleted) and completed.attempt == 2
    assert delivery.settled == [("ack", 0.0)]


async def test_an_attempt_claimed_by_another_execution_is_left_to_it() -> None:
    # two executions computed the same attempt; the other one's ChunkStarted was stored first
    class RacingLog(FakeLog):
        async def claim(self, event: ev.RunEvent, expected_last_seq: int) -> bool:
            self.add(ev.ChunkStarted(chunk_index=4, attempt=1), attempt=1)
            return await super().claim(event, expected_last_seq)

    log, delivery = RacingLog(), FakeDelivery(codec.encode_task(TASK))
    exporter = FakeExporter(ChunkExport(PARTS))
    outcome = await _worker(log, exporter).handle(delivery)
    assert exporter.calls == 0 and outcome.action == "none"
    assert log.kinds == ["chunk_started"]  # the other execution's, not ours
    assert delivery.settled == []  # neither ack nor nak: its holder settles it


async def test_only_the_attempt_whose_completion_was_stored_counts_rows_and_bytes() -> None:
    registry = metrics.new_registry()
    counted = metrics.WorkerMetrics(registry)

    def worker(log: FakeLog, exporter: FakeExporter) -> ChunkWorker:
        return ChunkWorker(
            log,
            exporter,
            FakeProbe(),
            instance="w-1",
            heartbeat_s=10.0,
            consumer_max_deliver=10,
            clock=lambda: T,
            metrics=counted,
        )

    await worker(FakeLog(), FakeExporter(ChunkExport(PARTS))).handle(
        FakeDelivery(codec.encode_task(TASK))
    )

    class RacingLog(FakeLog):  # another attempt's ChunkCompleted is stored first
        async def append(self, event: ev.RunEvent) -> Appended:
            if event.kind == "chunk_completed" and event.attempt == 2:
                self.add(ev.ChunkCompleted(chunk_index=4, rows=100, files=2, attempt=1), 1)
            return await super().append(event)

    await worker(RacingLog(), FakeExporter(ChunkExport(PARTS))).handle(
        FakeDelivery(codec.encode_task(TASK), delivered=2)
    )
    await worker(FakeLog(), FakeExporter(SourceError("lost", retryable=True))).handle(
        FakeDelivery(codec.encode_task(TASK))
    )

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("sluiceway_rows_exported_total") == 100
    assert sample("sluiceway_bytes_written_total") == 1000
    for outcome in ("completed", "lost", "retry"):
        assert sample("sluiceway_chunk_duration_seconds_count", outcome=outcome) == 1, outcome
    assert sample("sluiceway_chunk_duration_seconds_count", outcome="failed") == 0
