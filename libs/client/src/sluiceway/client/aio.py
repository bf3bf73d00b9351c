"""The asynchronous client (grpc.aio) of the Control (planner) and Tracker APIs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from sluiceway.client import errors
from sluiceway.client.options import ClientOptions
from sluiceway.common import codec
from sluiceway.common.domain.events import ExportSpec
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc

R = TypeVar("R", bound=Message)

# What a run is submitted or planned from: a resolved export (the domain dataclass or its
# message), or a YAML document that the planner reads and checks itself.
Export = ExportSpec | events_pb2.ExportSpec | control_pb2.ConfigDocument
Status = events_pb2.RunStatus | str

TERMINAL = frozenset(
    {
        events_pb2.RUN_STATUS_SUCCEEDED,
        events_pb2.RUN_STATUS_FAILED,
        events_pb2.RUN_STATUS_CANCELED,
        events_pb2.RUN_STATUS_SKIPPED,
    }
)
LIST_RUNS_MAX_PAGE = 500  # the tracker's cap on ListRuns.page_size
POLL_S = 0.2  # between GetRun attempts while waiting for the tracker to catch up
# How watch reconnects: a cut-off slow reader, or a connection that dropped or was refused.
RESUMABLE = (errors.ResourceExhausted, errors.Unavailable)


def is_terminal(summary: tracker_pb2.RunSummary) -> bool:
    return summary.status in TERMINAL


def config_document(
    text: str, export_name: str = "", *, base_dir: str = "", file_name: str = ""
) -> control_pb2.ConfigDocument:
    """A YAML config for SubmitRun/PlanRun, read by the planner: relative paths resolve against
    `base_dir` on the planner's machine, and `url_env` variables in the planner's environment."""
    return control_pb2.ConfigDocument(
        text=text, export_name=export_name, base_dir=base_dir, file_name=file_name
    )


def config_file(path: str | Path, export_name: str = "") -> control_pb2.ConfigDocument:
    """config_document of a local file, its folder as base_dir."""
    p = Path(path)
    return config_document(
        p.read_text(encoding="utf-8"),
        export_name,
        base_dir=str(p.resolve().parent),
        file_name=str(path),
    )


def _set_export(
    request: control_pb2.SubmitRunRequest | control_pb2.PlanRunRequest, export: Export
) -> None:
    if isinstance(export, control_pb2.ConfigDocument):
        request.config.CopyFrom(export)
    elif isinstance(export, events_pb2.ExportSpec):
        request.spec.CopyFrom(export)
    elif isinstance(export, ExportSpec):
        codec.to_message(export, request.spec)
    else:
        raise TypeError(
            f"export: expected ExportSpec or ConfigDocument, got {type(export).__name__}"
        )


class AsyncClient:
    """Submit, plan and cancel runs (Control, on the planner) and read them (Tracker).

    Answers are the API's protobuf messages (RunSummary, StoredEvent, ...), so fields added to
    the API reach callers without a client release. Failures raise `errors.SluicewayError`
    subclasses. Channels open on first use, bound to that event loop: use one client per loop.
    `close()` (or `async with`) closes them. Either address may be empty when only the other
    API is used."""

    def __init__(
        self, control: str = "", tracker: str = "", options: ClientOptions | None = None
    ) -> None:
        self.control_addr = control
        self.tracker_addr = tracker
        self.options = options or ClientOptions()
        self._metadata = tuple(self.options.metadata) or None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._control: control_pb2_grpc.ControlStub | None = None
        self._tracker: tracker_pb2_grpc.TrackerStub | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._control = self._tracker = None
        for channel in channels:
            await channel.close()

    # ---- channels ------------------------------------------------------------------------------

    def _channel(self, target: str, api: str) -> grpc.aio.Channel:
        if not target:
            raise ValueError(f"no {api} address: pass {api}='host:port' to the client")
        channel = self._channels.get(target)
        if channel is None:
            opts = self.options
            kwargs: dict[str, Any] = {
                "options": list(opts.channel_options),
                "interceptors": list(opts.interceptors) or None,
            }
            if opts.credentials is not None:
                channel = grpc.aio.secure_channel(target, opts.credentials, **kwargs)
            else:
                channel = grpc.aio.insecure_channel(target, **kwargs)
            self._channels[target] = channel
        return channel

    @property
    def _control_stub(self) -> control_pb2_grpc.ControlStub:
        if self._control is None:
            self._control = control_pb2_grpc.ControlStub(  # type: ignore[no-untyped-call]
                self._channel(self.control_addr, "control")
            )
        return self._control

    @property
    def _tracker_stub(self) -> tracker_pb2_grpc.TrackerStub:
        if self._tracker is None:
            self._tracker = tracker_pb2_grpc.TrackerStub(  # type: ignore[no-untyped-call]
                self._channel(self.tracker_addr, "tracker")
            )
        return self._tracker

    async def _unary(
        self, method: Callable[..., Awaitable[R]], request: Message, timeout_s: float | None
    ) -> R:
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err) from err

    # ---- Control -------------------------------------------------------------------------------

    async def submit(
        self,
        export: Export,
        *,
        requested_by: str = "",
        options: Mapping[str, str] | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> control_pb2.SubmitRunResponse:
        """Start a run; the answer's `stream_seq` is the min_seq that reads this write back.
        `priority` (1 low, 2 normal, 3 high; 0 = the export's) overrides the export's."""
        request = control_pb2.SubmitRunRequest(
            requested_by=requested_by, options=options or {}, priority=priority
        )
        _set_export(request, export)
        return await self._unary(self._control_stub.SubmitRun, request, timeout_s)

    async def plan(
        self, export: Export, *, timeout_s: float | None = None
    ) -> control_pb2.PlanRunResponse:
        """A dry run: `plan` (with `plan.plan_id`), `warnings` and the resolved `spec`."""
        request = control_pb2.PlanRunRequest()
        _set_export(request, export)
        timeout = self.options.plan_timeout_s if timeout_s is None else timeout_s
        return await self._unary(self._control_stub.PlanRun, request, timeout)

    async def cancel(
        self,
        run_id: str,
        *,
        reason: str = "",
        requested_by: str = "",
        timeout_s: float | None = None,
    ) -> control_pb2.CancelRunResponse:
        """Ask a run to stop; FailedPrecondition when it has already ended."""
        request = control_pb2.CancelRunRequest(
            run_id=run_id, reason=reason, requested_by=requested_by
        )
        return await self._unary(self._control_stub.CancelRun, request, timeout_s)

    async def apply_schedules(
        self,
        specs: Iterable[ExportSpec | events_pb2.ExportSpec],
        *,
        applied_by: str = "",
        timeout_s: float | None = None,
    ) -> control_pb2.ApplySchedulesResponse:
        """Install or update the schedules of resolved specs (one without `schedule` removes
        its export's installed schedule)."""
        request = control_pb2.ApplySchedulesRequest(applied_by=applied_by)
        for spec in specs:
            target = request.specs.add()
            if isinstance(spec, events_pb2.ExportSpec):
                target.CopyFrom(spec)
            else:
                codec.to_message(spec, target)
        return await self._unary(self._control_stub.ApplySchedules, request, timeout_s)

    async def list_schedules(
        self, *, upcoming: int = 3, timeout_s: float | None = None
    ) -> control_pb2.ListSchedulesResponse:
        """The installed schedules with their next `upcoming` occurrences."""
        request = control_pb2.ListSchedulesRequest(upcoming=upcoming)
        return await self._unary(self._control_stub.ListSchedules, request, timeout_s)

    # ---- Tracker -------------------------------------------------------------------------------

    async def get(
        self,
        run_id: str,
        *,
        min_seq: int = 0,
        wait_s: float = 0.0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.RunSummary:
        """The run's summary. `min_seq` (e.g. SubmitRunResponse.stream_seq) reads your own write:
        the tracker answers Unavailable until it has applied that sequence. With `wait_s`,
        Unavailable and NotFound are retried for that long."""
        request = tracker_pb2.GetRunRequest(run_id=run_id, min_seq=min_seq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                return await self._unary(self._tracker_stub.GetRun, request, timeout_s)
            except (errors.Unavailable, errors.NotFound):
                left = deadline - loop.time()
                if left <= 0:
                    raise
                await asyncio.sleep(min(POLL_S, left))

    async def list_runs(
        self,
        *,
        export_name: str = "",
        statuses: Iterable[Status] = (),
        requested_after: datetime | None = None,
        requested_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> tracker_pb2.ListRunsResponse:
        """One page of runs, newest first (journals omitted); pass `next_page_token` back for
        the next. `statuses`: events_pb2.RunStatus values or names ("RUN_STATUS_FAILED")."""
        request = tracker_pb2.ListRunsRequest(
            export_name=export_name,
            statuses=list(statuses),
            page_size=page_size,
            page_token=page_token,
        )
        if requested_after is not None:
            request.requested_after.FromDatetime(requested_after)
        if requested_before is not None:
            request.requested_before.FromDatetime(requested_before)
        return await self._unary(self._tracker_stub.ListRuns, request, timeout_s)

    async def iter_runs(
        self,
        *,
        export_name: str = "",
        statuses: Iterable[Status] = (),
        requested_after: datetime | None = None,
        requested_before: datetime | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[tracker_pb2.RunSummary]:
        """Every matching run (at most `limit`), newest first, following the pages."""
        statuses = list(statuses)
        token, count = "", 0
        while limit is None or count < limit:
            size = page_size
            if not size and limit is not None:
                size = min(LIST_RUNS_MAX_PAGE, limit - count)
            page = await self.list_runs(
                export_name=export_name,
                statuses=statuses,
                requested_after=requested_after,
                requested_before=requested_before,
                page_size=size,
                page_token=token,
            )
            for run in page.runs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield run
            token = page.next_page_token
            if not token or not page.runs:
                return

    async def get_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.GetRunEventsResponse:
        """One page of the run's stored events after `after_seq`, in stream order."""
        request = tracker_pb2.GetRunEventsRequest(
            run_id=run_id, after_seq=after_seq, page_size=page_size
        )
        return await self._unary(self._tracker_stub.GetRunEvents, request, timeout_s)

    async def iter_events(
        self, run_id: str, *, after_seq: int = 0, page_size: int = 0
    ) -> AsyncIterator[tracker_pb2.StoredEvent]:
        """Every event the tracker holds for the run now, page by page (it does not wait for
        more: see `watch`)."""
        after = after_seq
        while True:
            page = await self.get_events(run_id, after_seq=after, page_size=page_size)
            for stored in page.events:
                if stored.seq > after:
                    after = stored.seq
                    yield stored
            if not page.next_after_seq or not page.events:
                return

    async def list_chunks(
        self, run_id: str, *, timeout_s: float | None = None
    ) -> tracker_pb2.ListChunksResponse:
        request = tracker_pb2.ListChunksRequest(run_id=run_id)
        return await self._unary(self._tracker_stub.ListChunks, request, timeout_s)

    async def list_parts(
        self, run_id: str, *, timeout_s: float | None = None
    ) -> tracker_pb2.ListPartsResponse:
        request = tracker_pb2.ListPartsRequest(run_id=run_id)
        return await self._unary(self._tracker_stub.ListParts, request, timeout_s)

    async def watch(
        self, run_id: str, *, from_seq: int = 0
    ) -> AsyncIterator[tracker_pb2.StoredEvent]:
        """The run's events after `from_seq`, catch-up then live, until the run ends.

        When the tracker cuts this reader off (ResourceExhausted) or the connection drops
        (Unavailable), the stream is reopened from the last sequence yielded, so every event
        comes exactly once and in order. Reconnections that bring nothing new are bounded by
        `options.watch_retry`; past it the last error is raised."""
        policy = self.options.watch_retry
        last, failures = from_seq, 0
        while True:
            progressed = False
            error: errors.SluicewayError
            call = self._tracker_stub.WatchRun(
                tracker_pb2.WatchRunRequest(run_id=run_id, from_seq=last),
                metadata=self._metadata,
            )
            try:
                async for stored in call:
                    if stored.seq <= last:
                        continue  # never yield an event twice, whatever a server resends
                    last, progressed, failures = stored.seq, True, 0
                    yield stored
                    if stored.event.WhichOneof("body") == "run_completed":
                        return
                # The server ended the stream without a RunCompleted: it does so when the run
                # had already ended before `last`. Believe it only if the summary agrees.
                try:
                    summary = await self.get(run_id, min_seq=last)
                except RESUMABLE as exc:
                    error = exc
                else:
                    if is_terminal(summary):
                        return
                    error = errors.Unavailable(
                        grpc.StatusCode.UNAVAILABLE,
                        f"WatchRun of run {run_id!r} ended at seq {last} before the run did",
                    )
            except grpc.RpcError as err:
                error = errors.from_rpc_error(err)
                if not isinstance(error, RESUMABLE):
                    raise error from err
            finally:
                call.cancel()
            if progressed and isinstance(error, errors.ResourceExhausted):
                continue  # cut off for being slow, after progress: resume at once
            failures += 1
            if failures > policy.max_attempts:
                raise error
            await asyncio.sleep(policy.backoff_s(failures))

    async def wait(
        self,
        run_id: str,
        *,
        min_seq: int = 0,
        catch_up_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.RunSummary:
        """Follow the run to its end and return its final summary.

        `min_seq` (SubmitRunResponse.stream_seq) makes a run just submitted visible first; the
        tracker gets `catch_up_s` to apply it. `timeout_s` bounds the whole wait (TimeoutError)."""
        async with asyncio.timeout(timeout_s):
            summary = await self.get(run_id, min_seq=min_seq, wait_s=catch_up_s)
            if is_terminal(summary):
                return summary
            last = max(min_seq, summary.last_seq)
            async for stored in self.watch(run_id, from_seq=summary.last_seq):
                last = stored.seq
            return await self.get(run_id, min_seq=last, wait_s=catch_up_s)
