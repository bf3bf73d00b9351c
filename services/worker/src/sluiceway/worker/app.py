"""The worker's flow for one chunk task: decide -> read and write parts -> append -> settle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from opentelemetry.trace import SpanKind

from sluiceway.common import codec, crash, telemetry
from sluiceway.common.bus import Appended
from sluiceway.common.domain import ids
from sluiceway.common.domain.events import (
    Body,
    ChunkTask,
    Producer,
    ResourceUsage,
    RunEvent,
    Warning,
)
from sluiceway.common.metrics import WorkerMetrics
from sluiceway.common.phases import Phases
from sluiceway.common.redact import redact
from sluiceway.common.runtrace import ATTEMPT_SPAN, ns
from sluiceway.common.sources.base import SourceError
from sluiceway.worker.domain.decide import (
    BASE_BACKOFF_MS,
    MAX_BACKOFF_MS,
    ChunkExport,
    Fail,
    Retry,
    Stopped,
    attempt_budget,
    decide_on_delivery,
    decide_on_error,
    decide_on_success,
    next_attempt,
)

log = logging.getLogger(__name__)


class EventLog(Protocol):
    """The part of sluiceway.common.bus.Bus the worker uses (fakes implement it in tests)."""

    async def append(self, event: RunEvent) -> Appended: ...

    async def chunk_winner(self, run_id: str, chunk_index: int) -> int | None: ...

    async def last_start(self, run_id: str, chunk_index: int) -> tuple[int, int] | None: ...

    async def claim(self, event: RunEvent, expected_last_seq: int) -> bool: ...

    async def run_stopped(self, run_id: str) -> str: ...


class Exporter(Protocol):
    def export(
        self,
        task: ChunkTask,
        attempt: int,
        stop: threading.Event,
        phases: Phases | None = None,
    ) -> ChunkExport:
        """Read the range into parts; raise Stopped at the next batch boundary once `stop`
        is set."""
        ...

    def set_aside(self, task: ChunkTask, attempt: int) -> list[str]:
        """Move this attempt's files to the run's quarantine; the names moved."""
        ...


class Delivery(Protocol):
    """One delivery of a task message: its bytes, its delivery count and the ack vocabulary."""

    data: bytes

    @property
    def attempt(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str] | None:
        """The message's headers (its producer's traceparent)."""
        ...

    async def ack(self) -> None: ...
    async def nak(self, delay_s: float) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


class Probe(Protocol):
    def read(self) -> tuple[float, float]: ...
    def usage(self, before: tuple[float, float]) -> ResourceUsage: ...


@dataclass(frozen=True)
class Outcome:
    """How a delivery was settled, for logs and tests."""

    action: str  # "ack" | "nak" | "term" | "none" (left to the execution that holds it)
    rows: int = 0
    files: int = 0
    error: str = ""
    # how a claimed attempt ended (metrics.CHUNK_OUTCOMES); "" when no attempt was claimed
    result: str = ""


class ChunkWorker:
    def __init__(
        self,
        log_: EventLog,
        exporter: Exporter,
        probe: Probe,
        *,
        instance: str,
        heartbeat_s: float,
        consumer_max_deliver: int,
        stop_poll_s: float = 1.0,
        backoff_ms: tuple[int, int] = (BASE_BACKOFF_MS, MAX_BACKOFF_MS),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._log = log_
        self._exporter = exporter
        self._probe = probe
        self._producer = Producer("worker", instance)
        self._heartbeat_s = heartbeat_s
        self._max_deliver = consumer_max_deliver
        self._stop_poll_s = stop_poll_s
        self._backoff_ms = backoff_ms  # (base, cap) of the capped exponential backoff
        self._clock = clock
        self._metrics = metrics

    def _event(
        self, task: ChunkTask, body: Body, attempt: int, resources: ResourceUsage | None = None
    ) -> RunEvent:
        return ids.new_event(
            task.run_id,
            task.spec.name,
            body,
            producer=self._producer,
            now=self._clock(),
            attempt=attempt,
            resources=resources,
        )

    async def handle(self, delivery: Delivery, *, priority: int = 0) -> Outcome:
        """Settle one delivery. Never raises for a bad task or a failed read; an error while
        appending (the bus is down) propagates so that the caller naks without a verdict.
        `priority`: the effective priority the task was taken with (see worker.domain.lanes)."""
        try:
            task = codec.decode_task(delivery.data)
        except codec.Poison as exc:
            log.error("poison chunk task terminated: %s", exc)
            await delivery.term()
            return Outcome("term", error=str(exc))
        with telemetry.consuming(task.run_id, delivery.headers):
            # the task stays ours from delivery to settlement, not only while it is read: reads
            # and appends can wait seconds for a JetStream cluster to elect a leader (the bus
            # retries), and a task whose ack_wait expired meanwhile would run twice
            heartbeat = asyncio.create_task(self._heartbeat(delivery))
            try:
                return await self._handle(task, delivery, priority)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _handle(self, task: ChunkTask, delivery: Delivery, priority: int = 0) -> Outcome:
        chunk = task.range.index
        # guards, one direct get each: a task of a run that ended (canceled) never starts, and
        # a redelivery of a chunk already completed (its ack was lost) is not read again
        stopped = await self._log.run_stopped(task.run_id)
        if stopped:
            await delivery.ack()
            log.info("chunk %d not started: %s", chunk, stopped)
            return Outcome("ack", error=stopped)
        winner = await self._log.chunk_winner(task.run_id, chunk)
        if winner is not None:
            await delivery.ack()
            log.info("chunk %d was already completed by attempt %d", chunk, winner)
            return Outcome("ack", error=f"completed by attempt {winner}")

        # the attempt number is claimed on the stream: no two executions ever share one, even
        # when a crashed server forgot a delivery and handed the task out twice
        last = await self._log.last_start(task.run_id, chunk)
        attempt = next_attempt(delivery.attempt, None if last is None else last[1])
        budget = attempt_budget(task.spec.max_attempts, self._max_deliver)
        before = self._probe.read()
        decision = decide_on_delivery(task, attempt, budget, priority=priority)
        if isinstance(decision, Fail):
            await self._log.append(
                self._event(task, decision.failed, attempt, self._probe.usage(before))
            )
            await delivery.term()
            log.warning("chunk %d: %s", chunk, decision.failed.error)
            return Outcome("term", error=decision.failed.error)

        started = self._event(task, decision.started, attempt, self._probe.usage(before))
        if not await self._log.claim(started, 0 if last is None else last[0]):
            # another execution started this chunk at the same moment: it holds the task (its
            # heartbeats keep it) and ack_wait hands it out again should that one die
            log.warning("chunk %d: attempt %d was claimed by another execution", chunk, attempt)
            return Outcome("none", error=f"attempt {attempt} claimed by another execution")
        return await self._attempt(task, delivery, attempt, budget, before, started)

    async def _attempt(
        self,
        task: ChunkTask,
        delivery: Delivery,
        attempt: int,
        budget: int,
        before: tuple[float, float],
        started: RunEvent,
    ) -> Outcome:
        """One claimed attempt, in its span: a child of the run's root with an id derived from
        (run, chunk, attempt), so that the committer can stand in for it should this process
        die before the span ends (runtrace.dead_attempts)."""
        chunk = task.range.index
        began = time.monotonic()
        with telemetry.span(
            ATTEMPT_SPAN,
            kind=SpanKind.CONSUMER,
            link_producer=True,
            start_time_ns=ns(started.occurred_at),
            span_id=telemetry.attempt_span_id(task.run_id, chunk, attempt),
            run_id=task.run_id,
            chunk=chunk,
            attempt=attempt,
        ) as current:
            log.info("chunk %d attempt %d/%d started", chunk, attempt, budget)
            outcome = await self._read_and_settle(task, delivery, attempt, budget, before)
            current.set_attribute("sluiceway.outcome", outcome.result)
            current.set_attribute("sluiceway.rows", outcome.rows)
            if outcome.result in ("retry", "failed"):
                telemetry.set_error(current, outcome.error)
        if self._metrics is not None and outcome.result:
            self._metrics.attempt_ended(outcome.result, time.monotonic() - began)
        return outcome

    async def _read_and_settle(
        self,
        task: ChunkTask,
        delivery: Delivery,
        attempt: int,
        budget: int,
        before: tuple[float, float],
    ) -> Outcome:
        chunk = task.range.index
        stop = threading.Event()
        phases = Phases()
        watch = asyncio.create_task(self._watch_run(task.run_id, stop))
        try:
            exported = await asyncio.to_thread(self._exporter.export, task, attempt, stop, phases)
        except Stopped:
            reason = watch.result() if watch.done() and not watch.cancelled() else "stopped"
            return await self._stopped(task, delivery, attempt, reason)
        except SourceError as exc:
            return await self._failed(
                task, delivery, attempt, budget, before, exc.retryable, str(exc)
            )
        except Exception as exc:  # unknown: a bug or a bad value; another attempt will not help
            log.exception("chunk %d attempt %d failed unexpectedly", chunk, attempt)
            return await self._failed(
                task,
                delivery,
                attempt,
                budget,
                before,
                False,
                redact(f"{type(exc).__name__}: {exc}"),
            )
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

        # fenced: if another attempt completed meanwhile, this one's files are set aside
        events_began = time.perf_counter()
        winner = await self._log.chunk_winner(task.run_id, chunk)
        if winner is not None and winner != attempt:
            return await self._lost(task, delivery, attempt, winner)
        done = decide_on_success(chunk, attempt, exported.parts, exported.source_rows)
        # every FileWritten must be stored before ChunkCompleted (the commit protocol)
        opened = {p.part_index: p.opened_ns for p in exported.parts}
        for body in done.files:
            # a span per part, from the part's opening to its fact being stored
            with telemetry.span(
                "part written",
                kind=SpanKind.PRODUCER,
                start_time_ns=opened.get(body.part_index) or None,
                file=body.file_name,
                part=body.part_index,
                rows=body.rows,
                bytes=body.bytes,
            ):
                await self._log.append(self._event(task, body, attempt))
        crash.point("worker.after_file_written")
        appended = await self._log.append(
            self._event(task, done.completed, attempt, self._probe.usage(before))
        )
        if appended.conflict:  # the stream holds another attempt's ChunkCompleted
            winner = await self._log.chunk_winner(task.run_id, chunk)
            if winner is not None and winner != attempt:
                return await self._lost(task, delivery, attempt, winner)
        phases.add("events", time.perf_counter() - events_began)
        if self._metrics is not None:
            self._metrics.chunk_completed(done.completed.rows, sum(f.bytes for f in done.files))
            self._metrics.phases_observed(phases.seconds())
        crash.point("worker.after_chunk_completed")
        await delivery.ack()
        log.info(
            "chunk %d attempt %d completed: %d rows in %d files",
            chunk,
            attempt,
            done.completed.rows,
            done.completed.files,
        )
        return Outcome(
            "ack", rows=done.completed.rows, files=done.completed.files, result="completed"
        )

    async def _lost(
        self, task: ChunkTask, delivery: Delivery, attempt: int, winner: int
    ) -> Outcome:
        """Another attempt of this chunk completed first: set this attempt's files aside."""
        moved = await asyncio.to_thread(self._exporter.set_aside, task, attempt)
        message = (
            f"attempt {attempt} of chunk {task.range.index} lost to attempt {winner}: "
            f"{len(moved)} file(s) moved to _quarantine/{task.run_id}/"
        )
        return await self._warn_and_ack(task, delivery, attempt, "fenced", message)

    async def _stopped(
        self, task: ChunkTask, delivery: Delivery, attempt: int, reason: str
    ) -> Outcome:
        """The run ended (canceled) while this chunk was read: stop here, say so, ack."""
        moved = await asyncio.to_thread(self._exporter.set_aside, task, attempt)
        message = (
            f"chunk {task.range.index} attempt {attempt} stopped at a batch boundary: {reason}"
            + (f"; {len(moved)} file(s) moved to _quarantine/{task.run_id}/" if moved else "")
        )
        return await self._warn_and_ack(task, delivery, attempt, "stopped", message)

    async def _warn_and_ack(
        self, task: ChunkTask, delivery: Delivery, attempt: int, context: str, message: str
    ) -> Outcome:
        """Record why this attempt ends without a result, then settle the task."""
        await self._log.append(
            self._event(task, Warning(context=context, message=message), attempt)
        )
        await delivery.ack()
        log.warning("%s", message)
        return Outcome("ack", error=message, result="lost" if context == "fenced" else "stopped")

    async def _failed(
        self,
        task: ChunkTask,
        delivery: Delivery,
        attempt: int,
        budget: int,
        before: tuple[float, float],
        retryable: bool,
        error: str,
    ) -> Outcome:
        error = redact(error)
        winner = await self._log.chunk_winner(task.run_id, task.range.index)
        if winner is not None and winner != attempt:  # e.g. its files were moved aside
            return await self._lost(task, delivery, attempt, winner)
        decision = decide_on_error(
            task.range.index,
            attempt,
            budget,
            retryable,
            error,
            base_ms=self._backoff_ms[0],
            cap_ms=self._backoff_ms[1],
        )
        usage = self._probe.usage(before)
        await self._log.append(self._event(task, decision.failed, attempt, usage))
        if isinstance(decision, Retry):
            await self._log.append(self._event(task, decision.retry, attempt))
            await delivery.nak(decision.backoff_ms / 1000)
            log.warning(
                "chunk %d attempt %d failed, retrying in %d ms: %s",
                task.range.index,
                attempt,
                decision.backoff_ms,
                error,
            )
            return Outcome("nak", error=error, result="retry")
        await delivery.term()
        log.error("chunk %d failed for good: %s", task.range.index, decision.failed.error)
        return Outcome("term", error=decision.failed.error, result="failed")

    async def _watch_run(self, run_id: str, stop: threading.Event) -> str:
        """Tell the reader to stop at its next batch boundary once the run has ended; returns
        why."""
        while True:
            await asyncio.sleep(self._stop_poll_s)
            try:
                reason = await self._log.run_stopped(run_id)
            except Exception as exc:
                log.warning("cannot check whether the run goes on: %s", exc)
                continue
            if reason:
                stop.set()
                return reason

    async def _heartbeat(self, delivery: Delivery) -> None:
        """Keep the task ours while a long chunk runs (ack_wait would redeliver it)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await delivery.in_progress()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
