"""The worker's flow for one chunk task: decide -> read and write parts -> append -> settle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sluiceway.common import codec, crash
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
from sluiceway.common.redact import redact
from sluiceway.common.sources.base import SourceError
from sluiceway.common.telemetry import run_id_var
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
    def export(self, task: ChunkTask, attempt: int, stop: threading.Event) -> ChunkExport:
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

    async def handle(self, delivery: Delivery) -> Outcome:
        """Settle one delivery. Never raises for a bad task or a failed read; an error while
        appending (the bus is down) propagates so that the caller naks without a verdict."""
        try:
            task = codec.decode_task(delivery.data)
        except codec.Poison as exc:
            log.error("poison chunk task terminated: %s", exc)
            await delivery.term()
            return Outcome("term", error=str(exc))
        token = run_id_var.set(task.run_id)
        # the task stays ours from delivery to settlement, not only while it is read: reads and
        # appends can wait seconds for a JetStream cluster to elect a leader (the bus retries),
        # and a task whose ack_wait expired meanwhile would run twice
        heartbeat = asyncio.create_task(self._heartbeat(delivery))
        try:
            return await self._handle(task, delivery)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            run_id_var.reset(token)

    async def _handle(self, task: ChunkTask, delivery: Delivery) -> Outcome:
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
        decision = decide_on_delivery(task, attempt, budget)
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
        log.info("chunk %d attempt %d/%d started", chunk, attempt, budget)
        stop = threading.Event()
        watch = asyncio.create_task(self._watch_run(task.run_id, stop))
        try:
            exported = await asyncio.to_thread(self._exporter.export, task, attempt, stop)
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
        winner = await self._log.chunk_winner(task.run_id, chunk)
        if winner is not None and winner != attempt:
            return await self._lost(task, delivery, attempt, winner)
        done = decide_on_success(chunk, attempt, exported.parts, exported.source_rows)
        # every FileWritten must be stored before ChunkCompleted (the commit protocol)
        for body in done.files:
            await self._log.append(self._event(task, body, attempt))
        crash.point("worker.after_file_written")
        appended = await self._log.append(
            self._event(task, done.completed, attempt, self._probe.usage(before))
        )
        if appended.conflict:  # the stream holds another attempt's ChunkCompleted
            winner = await self._log.chunk_winner(task.run_id, chunk)
            if winner is not None and winner != attempt:
                return await self._lost(task, delivery, attempt, winner)
        crash.point("worker.after_chunk_completed")
        await delivery.ack()
        log.info(
            "chunk %d attempt %d completed: %d rows in %d files",
            chunk,
            attempt,
            done.completed.rows,
            done.completed.files,
        )
        return Outcome("ack", rows=done.completed.rows, files=done.completed.files)

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
        return Outcome("ack", error=message)

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
            return Outcome("nak", error=error)
        await delivery.term()
        log.error("chunk %d failed for good: %s", task.range.index, decision.failed.error)
        return Outcome("term", error=decision.failed.error)

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
