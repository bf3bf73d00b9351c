"""Thin synchronous gRPC clients for the Control (planner) and Tracker APIs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from sluiceway.cli import stack as stackmod
from sluiceway.common import codec
from sluiceway.common.domain.events import ExportSpec
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc

CALL_TIMEOUT_S = 30.0
TERMINAL = frozenset(
    {
        events_pb2.RUN_STATUS_SUCCEEDED,
        events_pb2.RUN_STATUS_FAILED,
        events_pb2.RUN_STATUS_CANCELED,
        events_pb2.RUN_STATUS_SKIPPED,
    }
)
NO_STACK = "no stack is running (start one with `sluiceway up`)"


class NoStack(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    control_addr: str
    tracker_addr: str


def resolve_endpoints(
    state_dir: str | Path,
    *,
    control: str | None = None,
    tracker: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoints:
    """Flags first, then SLUICEWAY_CONTROL_ADDR / SLUICEWAY_TRACKER_ADDR, then state.json."""
    e = os.environ if env is None else env
    c = control or e.get("SLUICEWAY_CONTROL_ADDR", "")
    t = tracker or e.get("SLUICEWAY_TRACKER_ADDR", "")
    if not (c and t):
        state = stackmod.read_state(state_dir)
        if state is not None:
            c = c or state.control_addr
            t = t or state.tracker_addr
    if not (c and t):
        raise NoStack(NO_STACK)
    return Endpoints(c, t)


def describe(err: grpc.RpcError) -> str:
    """`<CODE>: <details>` on one line."""
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (err.details() if hasattr(err, "details") else "") or str(err)
    return f"{name}: {' '.join(str(details).split())}"


class Client:
    """One channel per API; closes both on exit."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._cch = grpc.insecure_channel(endpoints.control_addr)
        self._tch = grpc.insecure_channel(endpoints.tracker_addr)
        self.control = control_pb2_grpc.ControlStub(self._cch)
        self.tracker = tracker_pb2_grpc.TrackerStub(self._tch)

    def close(self) -> None:
        self._cch.close()
        self._tch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- control -------------------------------------------------------------------------------

    # The CLI checks the config where it is and sends the resolved export: paths are absolute
    # and a query_file is already read into `query` (the planner never reads client files).

    def submit(
        self,
        spec: ExportSpec,
        *,
        requested_by: str = "",
        options: Mapping[str, str] | None = None,
    ) -> control_pb2.SubmitRunResponse:
        req = control_pb2.SubmitRunRequest(
            spec=_spec_pb(spec), requested_by=requested_by, options=dict(options or {})
        )
        return self.control.SubmitRun(req, timeout=CALL_TIMEOUT_S)

    def plan(self, spec: ExportSpec) -> control_pb2.PlanRunResponse:
        return self.control.PlanRun(control_pb2.PlanRunRequest(spec=_spec_pb(spec)), timeout=120.0)

    def cancel(
        self, run_id: str, *, reason: str = "", requested_by: str = ""
    ) -> control_pb2.CancelRunResponse:
        req = control_pb2.CancelRunRequest(run_id=run_id, reason=reason, requested_by=requested_by)
        return self.control.CancelRun(req, timeout=CALL_TIMEOUT_S)

    # ---- tracker -------------------------------------------------------------------------------

    def get_run(
        self, run_id: str, *, min_seq: int = 0, wait_s: float = 0.0
    ) -> tracker_pb2.RunSummary:
        """GetRun; with wait_s, retries UNAVAILABLE (projection behind) and NOT_FOUND (not yet
        projected) for that long."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.tracker.GetRun(
                    tracker_pb2.GetRunRequest(run_id=run_id, min_seq=min_seq),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.RpcError as err:
                retry = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
                if not retry or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def list_runs(
        self, *, export_name: str = "", statuses: list[int] | None = None, limit: int = 50
    ) -> list[tracker_pb2.RunSummary]:
        out: list[tracker_pb2.RunSummary] = []
        token = ""
        while len(out) < limit:
            resp = self.tracker.ListRuns(
                tracker_pb2.ListRunsRequest(
                    export_name=export_name,
                    statuses=statuses or [],
                    page_size=min(500, limit - len(out)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            out.extend(resp.runs)
            token = resp.next_page_token
            if not token or not resp.runs:
                break
        return out[:limit]

    def events(self, run_id: str, *, after_seq: int = 0) -> Iterator[tracker_pb2.StoredEvent]:
        """Every stored event of a run, page by page."""
        after = after_seq
        while True:
            resp = self.tracker.GetRunEvents(
                tracker_pb2.GetRunEventsRequest(run_id=run_id, after_seq=after, page_size=1000),
                timeout=CALL_TIMEOUT_S,
            )
            yield from resp.events
            if resp.events:
                after = max(after, resp.events[-1].seq)
            if not resp.next_after_seq or not resp.events:
                return
            after = max(after, resp.next_after_seq)

    def watch(
        self,
        run_id: str,
        *,
        from_seq: int = 0,
        reconnect_s: float = 60.0,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> Iterator[tracker_pb2.StoredEvent]:
        """WatchRun until the run ends, resuming after the last seq seen when the server cuts the
        stream (RESOURCE_EXHAUSTED) or the connection drops. Ends after RunCompleted, or when
        the stream ends and GetRun says the run is terminal."""
        last = from_seq
        down_since: float | None = None
        while True:
            try:
                stream = self.tracker.WatchRun(
                    tracker_pb2.WatchRunRequest(run_id=run_id, from_seq=last)
                )
                for stored in stream:
                    down_since = None
                    if stored.seq <= last:
                        continue  # a resumed stream may repeat the boundary
                    last = stored.seq
                    yield stored
                    if stored.event.WhichOneof("body") == "run_completed":
                        stream.cancel()
                        return
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    continue  # cut off as a slow client: resume from `last` at once
                if code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.INTERNAL,
                ):
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > reconnect_s:
                    raise
                if on_reconnect is not None:
                    on_reconnect(describe(err))
                time.sleep(0.5)
                continue
            # the server ended the stream: done if the run is over, otherwise resume
            try:
                summary = self.get_run(run_id, min_seq=last, wait_s=5.0)
            except grpc.RpcError:
                time.sleep(0.5)
                continue
            if summary.status in TERMINAL:
                return
            time.sleep(0.2)


def _spec_pb(spec: ExportSpec) -> events_pb2.ExportSpec:
    msg = events_pb2.ExportSpec()
    codec.to_message(spec, msg)
    return msg
