"""The run's trace, closed by whoever ends the run: the root span and the spans of attempts
that died, emitted once RunCompleted is stored (docs/architecture.md, "Tracing")."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from opentelemetry.trace import SpanKind

from sluiceway.common import telemetry
from sluiceway.common.bus import Appended, Bus, Names
from sluiceway.common.domain.events import (
    ChunkCompleted,
    ChunkFailed,
    ChunkStarted,
    ChunkTask,
    RunCompleted,
    RunEvent,
    RunRequested,
    RunStatus,
)
from sluiceway.common.metrics import RunMetrics

log = logging.getLogger(__name__)

ROOT_SPAN = "run"
ATTEMPT_SPAN = "chunk attempt"
DEAD_ATTEMPT = (
    "no outcome recorded: the attempt's process died (or lost its task) and a later attempt "
    "took the chunk over"
)


def ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000) * 1000


@dataclass(frozen=True)
class DeadAttempt:
    chunk_index: int
    attempt: int
    started_at: datetime
    superseded_at: datetime  # when the next attempt of the chunk started


def dead_attempts(events: Iterable[RunEvent]) -> list[DeadAttempt]:
    """Attempts that started, recorded no outcome (ChunkCompleted or ChunkFailed) and were
    superseded by a later attempt of their chunk: their process died, and their own span
    never ended. Events in stream order."""
    started: dict[int, list[tuple[int, datetime]]] = {}
    ended: set[tuple[int, int]] = set()
    for event in events:
        body = event.body
        if isinstance(body, ChunkStarted):
            started.setdefault(body.chunk_index, []).append((body.attempt, event.occurred_at))
        elif isinstance(body, ChunkCompleted | ChunkFailed):
            ended.add((body.chunk_index, body.attempt))
    dead = []
    for chunk, starts in started.items():
        for (attempt, at), (_, next_at) in itertools.pairwise(starts):
            if (chunk, attempt) not in ended:
                dead.append(DeadAttempt(chunk, attempt, at, next_at))
    return dead


class TracedRunLog:
    """The run log of a service that requests or ends runs (planner, committer): the Bus,
    plus the run's trace and the runs counter around two appends.

    - RunRequested is appended inside the "run requested" span, the first child of the run's
      root, linked to the caller's span (the gRPC server span of SubmitRun).
    - A RunCompleted that the stream stored for *this* writer (not a duplicate, not another
      writer's: the append is once-only) counts the run, and once the message being handled
      is settled (`after_message`) the root span and the spans of dead attempts are emitted
      and flushed: after every span of this process for the run has ended."""

    def __init__(self, bus: Bus, metrics: RunMetrics | None = None) -> None:
        self._bus = bus
        self._metrics = metrics
        self._ended: list[RunEvent] = []

    @property
    def names(self) -> Names:
        return self._bus.names

    async def append(
        self,
        event: RunEvent,
        headers: Mapping[str, str] | None = None,
        *,
        expected_last_seq: int | None = None,
    ) -> Appended:
        if isinstance(event.body, RunRequested):
            caller = telemetry.current_span_context()
            with telemetry.span(
                "run requested",
                parent=telemetry.run_context(event.run_id),
                kind=SpanKind.PRODUCER,
                links=(caller,),
                run_id=event.run_id,
                export=event.export_name,
            ):
                return await self._bus.append(event, headers, expected_last_seq=expected_last_seq)
        appended = await self._bus.append(event, headers, expected_last_seq=expected_last_seq)
        if isinstance(event.body, RunCompleted) and not (appended.duplicate or appended.conflict):
            if self._metrics is not None:
                self._metrics.run_ended(event.body.status.value)
            if telemetry.exporting():
                self._ended.append(event)
        return appended

    async def history(self, run_id: str) -> list[tuple[int, RunEvent]]:
        return await self._bus.history(run_id)

    async def last_on_subject(self, subject: str) -> tuple[int, RunEvent] | None:
        return await self._bus.last_on_subject(subject)

    async def last_commit(self, export_name: str) -> RunEvent | None:
        return await self._bus.last_commit(export_name)

    async def baseline(self, export_name: str) -> RunEvent | None:
        return await self._bus.baseline(export_name)

    async def record_commit(self, run_id: str, export_name: str) -> None:
        await self._bus.record_commit(run_id, export_name)

    async def record_scheduled(self, export_name: str, seq: int) -> None:
        await self._bus.record_scheduled(export_name, seq)

    async def scheduler_snapshot(self) -> tuple[int, bytes] | None:
        return await self._bus.scheduler_snapshot()

    async def save_scheduler_snapshot(self, seq: int, data: bytes) -> bool:
        return await self._bus.save_scheduler_snapshot(seq, data)

    async def stream_first_seq(self) -> int:
        return await self._bus.stream_first_seq()

    async def publish_task(self, task: ChunkTask, msg_id: str) -> Appended:
        return await self._bus.publish_task(task, msg_id)

    async def last_scheduled(self, export_name: str) -> RunEvent | None:
        return await self._bus.last_scheduled(export_name)

    async def after_message(self) -> None:
        """Emit the root span of every run this process ended while handling the message."""
        while self._ended:
            event = self._ended.pop(0)
            try:
                await self._close_trace(event)
            except Exception:  # telemetry never fails the run
                log.warning("could not emit the run's root span", exc_info=True)

    async def _close_trace(self, completed: RunEvent) -> None:
        assert isinstance(completed.body, RunCompleted)
        run_id = completed.run_id
        end_ns = max(time.time_ns(), ns(completed.occurred_at))
        history = [e for _, e in await self._bus.history(run_id)]
        # what happened up to RunCompleted (a straggler's later facts are its own spans)
        upto = next((i for i, e in enumerate(history) if e.event_id == completed.event_id), None)
        events = history if upto is None else history[: upto + 1]
        requested = next((e for e in events if isinstance(e.body, RunRequested)), completed)
        context = telemetry.run_context(run_id)
        for dead in dead_attempts(events):
            telemetry.emit_span(
                ATTEMPT_SPAN,
                start_ns=ns(dead.started_at),
                end_ns=ns(dead.superseded_at),
                span_id=telemetry.attempt_span_id(run_id, dead.chunk_index, dead.attempt),
                parent=context,
                error=DEAD_ATTEMPT,
                run_id=run_id,
                chunk=dead.chunk_index,
                attempt=dead.attempt,
                outcome="died",
            )
        status = completed.body.status
        trace_id, span_id = telemetry.run_trace_ids(run_id)
        telemetry.emit_span(
            ROOT_SPAN,
            start_ns=min(ns(requested.occurred_at), end_ns),
            end_ns=end_ns,
            trace_id=trace_id,
            span_id=span_id,
            error=(completed.body.error_message or "failed")
            if status == RunStatus.FAILED
            else None,
            run_id=run_id,
            export=completed.export_name,
            status=status.value,
            ended_by=completed.producer.service,
        )
        # the root span is what makes the trace whole: do not leave it in a buffer
        await asyncio.to_thread(telemetry.flush)
