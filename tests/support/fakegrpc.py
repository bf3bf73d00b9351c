"""In-process fake Control and Tracker servicers on a real grpc.aio server (loopback, port 0).

The fake tracker holds one scripted run. Its WatchRun follows a script of interruptions, one per
stream opened: cut the stream after N events with a status (as the real tracker cuts a slow
reader off), or drop the whole server (the test restarts it on the same port)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from sluiceway.v1 import (
    control_pb2,
    control_pb2_grpc,
    events_pb2,
    tracker_pb2,
    tracker_pb2_grpc,
)

RUN_ID = "20261203T160000Z-0a1b2c3d"


def run_events(count: int, run_id: str = RUN_ID) -> list[tracker_pb2.StoredEvent]:
    """`count` events of one run, the last a RunCompleted, at sparse stream sequences (other
    runs' events sit between them on the real stream)."""
    out = []
    for i in range(count):
        event = events_pb2.RunEvent(event_id=f"{run_id}/{i}", run_id=run_id, export_name="orders")
        if i == count - 1:
            event.run_completed.status = events_pb2.RUN_STATUS_SUCCEEDED
            kind = "completed"
        else:
            event.warning.context = "test"
            event.warning.message = f"event {i}"
            kind = "warning"
        out.append(tracker_pb2.StoredEvent(seq=3 * i + 2, kind=kind, event=event))
    return out


@dataclass(frozen=True)
class Cut:
    """End the stream after `after` events: abort with `code`, or (code None) stop the server."""

    after: int
    code: grpc.StatusCode | None = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class FakeTracker(tracker_pb2_grpc.TrackerServicer):
    events: list[tracker_pb2.StoredEvent]
    cuts: deque[Cut] = field(default_factory=deque)
    run_id: str = RUN_ID
    watch_from: list[int] = field(default_factory=list)  # from_seq of every WatchRun opened
    get_min_seq: list[int] = field(default_factory=list)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    written: int = 0  # the last seq a WatchRun wrote
    status: int | None = None  # GetRun's status; by default RUNNING until RunCompleted is written
    abort_with: tuple[grpc.StatusCode, str] | None = None  # every unary call fails with this
    metadata: list[dict[str, str]] = field(default_factory=list)  # of every GetRun
    unary_calls: int = 0
    delay_s: float = 0.0  # before every unary answer

    async def _unary(self, context: grpc.aio.ServicerContext) -> None:
        self.unary_calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.abort_with is not None:
            await context.abort(*self.abort_with)

    async def GetRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._unary(context)
        self.get_min_seq.append(request.min_seq)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if request.run_id != self.run_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")
        status = self.status
        if status is None:
            ended = any(e.seq <= self.written and e.kind == "completed" for e in self.events)
            status = events_pb2.RUN_STATUS_SUCCEEDED if ended else events_pb2.RUN_STATUS_RUNNING
        return tracker_pb2.RunSummary(run_id=self.run_id, status=status, last_seq=self.written)

    async def GetRunEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._unary(context)
        size = request.page_size or 200
        rows = [e for e in self.events if e.seq > request.after_seq][:size]
        response = tracker_pb2.GetRunEventsResponse(events=rows)
        if len(rows) == size:
            response.next_after_seq = rows[-1].seq
        return response

    async def ListRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Runs r000..r{n}: page tokens are the index of the next run."""
        await self._unary(context)
        start = int(request.page_token or 0)
        size = request.page_size or 50
        runs = [tracker_pb2.RunSummary(run_id=f"r{i:03d}") for i in range(start, 23)][:size]
        response = tracker_pb2.ListRunsResponse(runs=runs)
        if start + size < 23:
            response.next_page_token = str(start + size)
        return response

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.watch_from.append(request.from_seq)
        cut = self.cuts.popleft() if self.cuts else None
        sent = 0
        for stored in self.events:
            if stored.seq <= request.from_seq:
                continue
            if cut is not None and sent == cut.after:
                if cut.code is None:
                    self.dropped.set()
                    await asyncio.Event().wait()  # until the server is stopped under us
                await context.abort(cut.code, f"cut: resume WatchRun with from_seq={stored.seq}")
            await context.write(stored)
            self.written = max(self.written, stored.seq)
            sent += 1


class FakeControl(control_pb2_grpc.ControlServicer):
    """Answers with the status and message of real planner errors, chosen by the request."""

    def __init__(self) -> None:
        self.submitted: list[control_pb2.SubmitRunRequest] = []

    async def SubmitRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.submitted.append(request)
        if request.requested_by == "too-long":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "requested_by: at most 256 characters"
            )
        if request.WhichOneof("export") == "config" and "chunk_count" in request.config.text:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "exports.yaml: export 'orders': field 'chunk_count': use one of chunk_size or "
                "chunk_count",
            )
        return control_pb2.SubmitRunResponse(run_id=RUN_ID, export_name="orders", stream_seq=7)

    async def CancelRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.run_id == RUN_ID:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"run {RUN_ID!r} already ended SUCCEEDED"
            )
        await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")

    async def PlanRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "source unreachable: connection refused")


class Served:
    """A grpc.aio server for the fakes; `restart()` serves them again on the same port."""

    def __init__(
        self,
        tracker: FakeTracker,
        control: FakeControl,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.tracker, self.control = tracker, control
        self.credentials = credentials  # TLS when set
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        tracker_pb2_grpc.add_TrackerServicer_to_server(self.tracker, server)
        control_pb2_grpc.add_ControlServicer_to_server(self.control, server)
        addr = f"127.0.0.1:{self.port}"
        if self.credentials is not None:
            self.port = server.add_secure_port(addr, self.credentials)
        else:
            self.port = server.add_insecure_port(addr)
        assert self.port, "could not bind a loopback port"
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def serve(
    events: Sequence[tracker_pb2.StoredEvent],
    cuts: Sequence[Cut] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[Served]:
    served = Served(FakeTracker(list(events), deque(cuts)), FakeControl(), credentials)
    await served.start()
    try:
        yield served
    finally:
        await served.stop()
