"""The Tracker gRPC API: translates requests into read-model queries, never decides."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2

from sluiceway.common import authn
from sluiceway.common.domain.access import Owner, Principal, can_see, visibility
from sluiceway.common.domain.ids import InvalidRunId, check_run_id
from sluiceway.common.rpc import abort
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.v1 import events_pb2, tracker_pb2, tracker_pb2_grpc

log = logging.getLogger(__name__)

LIST_RUNS_DEFAULT, LIST_RUNS_MAX = 50, 500
EVENTS_DEFAULT, EVENTS_MAX = 200, 1000


class DbPort(Protocol):
    store: TrackerStore

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...


class ProgressPort(Protocol):
    applied_seq: int

    def progress_marker(self) -> asyncio.Event: ...

    def run_marker(self, run_id: str) -> asyncio.Event: ...


# ---- row -> protobuf ------------------------------------------------------------------------

_SUMMARY_SKIP = {
    "apply_plan_id",
    "apply_force",
    "apply_bypassed",
    "requested_at",
    "finished_at",
    "scheduled_at",
    "status",
}


def _ts(dt: datetime | None) -> Any:
    ts = timestamp_pb2.Timestamp()
    if dt is not None:
        ts.FromDatetime(dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt)
    return ts


def _run_status(name: str) -> Any:
    return events_pb2.RunStatus.Value(f"RUN_STATUS_{name}")


def summary_to_pb(row: dict[str, Any], journal: list[dict[str, Any]] | None = None) -> Any:
    msg = tracker_pb2.RunSummary()
    for key, value in row.items():
        if key in _SUMMARY_SKIP:
            continue
        setattr(msg, key, value)
    msg.status = _run_status(row["status"])
    msg.apply_context.plan_id = row["apply_plan_id"]
    msg.apply_context.force = row["apply_force"]
    msg.apply_context.bypassed.extend(row["apply_bypassed"] or [])
    if row["requested_at"] is not None:
        msg.requested_at.CopyFrom(_ts(row["requested_at"]))
    if row["finished_at"] is not None:
        msg.finished_at.CopyFrom(_ts(row["finished_at"]))
    if row["scheduled_at"] is not None:
        msg.scheduled_at.CopyFrom(_ts(row["scheduled_at"]))
    for j in journal or []:
        msg.journal.add(
            seq=j["seq"], kind=j["kind"], occurred_at=_ts(j["occurred_at"]), message=j["message"]
        )
    return msg


def chunk_to_pb(row: dict[str, Any]) -> Any:
    msg = tracker_pb2.ChunkInfo(
        chunk_index=row["chunk_index"],
        status=events_pb2.ChunkStatus.Value(f"CHUNK_STATUS_{row['status']}"),
        start_key=row["start_key"],
        end_key=row["end_key"],
        attempt=row["attempt"],
        rows=row["rows"],
        files=row["files"],
        error=row["error"],
        winning_attempt=row["winning_attempt"],
        priority=row["priority"],
    )
    if row["started_at"] is not None:
        msg.started_at.CopyFrom(_ts(row["started_at"]))
    if row["finished_at"] is not None:
        msg.finished_at.CopyFrom(_ts(row["finished_at"]))
    return msg


def part_to_pb(row: dict[str, Any]) -> Any:
    return tracker_pb2.PartInfo(**{k: v for k, v in row.items() if k != "run_id"})


def stored_event(seq: int, kind: str, data: bytes) -> Any:
    return tracker_pb2.StoredEvent(seq=seq, kind=kind, event=events_pb2.RunEvent.FromString(data))


# ---- page tokens: an opaque keyset cursor -----------------------------------------------------


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_page_token(requested_at: datetime | None, run_id: str) -> str:
    micros = 0
    if requested_at is not None:
        at = requested_at.replace(tzinfo=UTC) if requested_at.tzinfo is None else requested_at
        micros = (at - EPOCH) // timedelta(microseconds=1)
    raw = json.dumps([micros, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    """Raises ValueError when the token was not made by encode_page_token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        micros, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise ValueError("malformed") from exc
    if not isinstance(micros, int) or isinstance(micros, bool) or not isinstance(run_id, str):
        raise ValueError("malformed")
    try:
        return EPOCH + timedelta(microseconds=micros), run_id
    except OverflowError as exc:  # a forged time outside datetime's range
        raise ValueError("malformed") from exc


def _page_size(value: int, default: int, maximum: int) -> int:
    if value < 0:
        raise ValueError(f"page_size must be >= 0 (0 = {default}), got {value}")
    return min(value or default, maximum)


def _statuses(values: Any) -> list[str]:
    """RunStatus numbers -> read-model names; raises ValueError naming an unknown number (a
    proto3 enum field carries any int32 on the wire)."""
    names = []
    for number in values:
        try:
            names.append(events_pb2.RunStatus.Name(number).removeprefix("RUN_STATUS_"))
        except ValueError:
            raise ValueError(f"statuses: unknown RunStatus value {number}") from None
    return names


def _time_bound(request: Any, field: str) -> datetime | None:
    """An optional Timestamp field as a datetime; raises ValueError naming the field when it is
    outside the Timestamp range (years 1-9999, nanos 0-999,999,999)."""
    if not request.HasField(field):
        return None
    try:
        dt: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{field}: {exc}") from None
    return dt


def _owner(run: dict[str, Any]) -> Owner:
    return Owner(run["owner"], run["team"])


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Reads go through `db.call` (one DuckDB thread), so no answer mixes two batches."""

    def __init__(
        self,
        db: DbPort,
        progress: ProgressPort,
        *,
        watch_page: int = 200,
        slow_client_timeout_s: float = 10.0,
        watch_wait_for_run_s: float = 5.0,
        audit: authn.Audit | None = None,
    ) -> None:
        self._audit = audit or authn.Audit()
        self._db = db
        self._progress = progress
        self._watch_page = watch_page
        self._slow_client_timeout_s = slow_client_timeout_s
        self._watch_wait_for_run_s = watch_wait_for_run_s

    async def _run_id(self, run_id: str, context: grpc.aio.ServicerContext) -> str:
        if not run_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        try:
            return check_run_id(run_id)
        except InvalidRunId as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _caller(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = authn.caller()
        if principal is None:  # served without the interceptor: refuse, never serve openly
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        return principal

    def _visible(
        self, principal: Principal, run: dict[str, Any] | None, method: str, run_id: str
    ) -> bool:
        """Whether the caller may know of the run; a hidden run is audited as a denial."""
        if run is None:
            return False
        if can_see(principal, _owner(run)):
            return True
        self._audit.denied(method, "not_owner", principal.name, run_id)
        return False

    async def _require_run(
        self, run_id: str, context: grpc.aio.ServicerContext, method: str
    ) -> None:
        """NOT_FOUND unless the run exists for the caller (another principal's run answers
        exactly like a run that does not exist)."""
        principal = await self._caller(context)
        run = await self._db.call(self._db.store.get_run, run_id)
        if not self._visible(principal, run, method, run_id):
            await abort(context, grpc.StatusCode.NOT_FOUND, f"run {run_id!r} not found")

    async def GetRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        run_id = await self._run_id(request.run_id, context)
        principal = await self._caller(context)
        applied = self._progress.applied_seq
        if request.min_seq > applied:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"not caught up: at seq {applied}, need {request.min_seq}",
            )
        store = self._db.store

        def read() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
            run = store.get_run(run_id)
            return run, (store.journal(run_id) if run is not None else [])

        run, journal = await self._db.call(read)
        if not self._visible(principal, run, "GetRun", run_id):
            await abort(context, grpc.StatusCode.NOT_FOUND, f"run {run_id!r} not found")
        return summary_to_pb(run, journal)

    async def ListRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        principal = await self._caller(context)
        try:
            limit = _page_size(request.page_size, LIST_RUNS_DEFAULT, LIST_RUNS_MAX)
            statuses = _statuses(request.statuses)
            requested_after = _time_bound(request, "requested_after")
            requested_before = _time_bound(request, "requested_before")
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        after_key = None
        if request.page_token:
            try:
                after_key = decode_page_token(request.page_token)
            except ValueError:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token is malformed: pass back a next_page_token",
                )
        rows = await self._db.call(
            self._db.store.list_runs,
            export_name=request.export_name,
            statuses=statuses,
            requested_after=requested_after,
            requested_before=requested_before,
            after_key=after_key,
            limit=limit + 1,
            visible_to=visibility(principal),
        )
        response = tracker_pb2.ListRunsResponse(runs=[summary_to_pb(r) for r in rows[:limit]])
        if len(rows) > limit:
            last = rows[limit - 1]
            response.next_page_token = encode_page_token(last["requested_at"], last["run_id"])
        return response

    async def ListChunks(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        run_id = await self._run_id(request.run_id, context)
        await self._require_run(run_id, context, "ListChunks")
        rows = await self._db.call(self._db.store.list_chunks, run_id)
        return tracker_pb2.ListChunksResponse(chunks=[chunk_to_pb(r) for r in rows])

    async def ListParts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        run_id = await self._run_id(request.run_id, context)
        await self._require_run(run_id, context, "ListParts")
        rows = await self._db.call(self._db.store.list_parts, run_id)
        return tracker_pb2.ListPartsResponse(parts=[part_to_pb(r) for r in rows])

    async def GetRunEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        run_id = await self._run_id(request.run_id, context)
        try:
            limit = _page_size(request.page_size, EVENTS_DEFAULT, EVENTS_MAX)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._require_run(run_id, context, "GetRunEvents")
        rows = await self._db.call(self._db.store.run_events, run_id, request.after_seq, limit)
        response = tracker_pb2.GetRunEventsResponse(events=[stored_event(*r) for r in rows])
        if len(rows) == limit:
            response.next_after_seq = rows[-1][0]
        return response

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Catch-up from the journal, then live. Each watcher re-queries its own run after each
        committed batch, a page at a time: no per-client buffer grows with the stream."""
        run_id = await self._run_id(request.run_id, context)
        principal = await self._caller(context)
        store = self._db.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._watch_wait_for_run_s
        # another principal's run is never streamed: it waits, then answers, exactly like a
        # run that does not exist (audited once, at the end)
        while True:
            run = await self._db.call(store.get_run, run_id)
            if run is not None and can_see(principal, _owner(run)):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._visible(principal, run, "WatchRun", run_id)
                await abort(context, grpc.StatusCode.NOT_FOUND, f"run {run_id!r} not found")
            marker = self._progress.run_marker(run_id)
            await _wait(marker, remaining)
        last = request.from_seq
        while True:
            marker = self._progress.run_marker(run_id)
            rows = await self._db.call(store.run_events, run_id, last, self._watch_page)
            for seq, kind, data in rows:
                try:
                    await asyncio.wait_for(
                        context.write(stored_event(seq, kind, data)),
                        timeout=self._slow_client_timeout_s,
                    )
                except TimeoutError:
                    log.warning(
                        "watch of run %s cut off: client too slow", run_id, extra={"run_id": run_id}
                    )
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"client too slow: resume WatchRun with from_seq={last}",
                    )
                last = seq
                if kind == "completed":
                    return
            if len(rows) == self._watch_page:
                continue
            if not rows:  # (an end among the rows returned above)
                run = await self._db.call(store.get_run, run_id)
                if run is not None and run["finished_at"] is not None and run["last_seq"] <= last:
                    return  # the run ended before from_seq: nothing more will come
            await _wait(marker, 5.0)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=timeout_s)
    except TimeoutError:
        pass
