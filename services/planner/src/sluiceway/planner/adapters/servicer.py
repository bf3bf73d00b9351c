"""The Control gRPC servicer: translates requests and errors; the Planner decides."""

from __future__ import annotations

import functools
import logging

import grpc
import nats.errors

from sluiceway.common import authn, codec
from sluiceway.common.config import ConfigError
from sluiceway.common.domain.access import ANONYMOUS, Action, Owner, Principal, can_see, may
from sluiceway.common.domain.events import PRIORITIES, ExportSpec, RunRequested
from sluiceway.common.domain.ids import InvalidRunId
from sluiceway.common.redact import redact
from sluiceway.common.rpc import abort
from sluiceway.common.sources.base import SourceError
from sluiceway.planner.app import (
    CancelDenied,
    ExportBusy,
    Planner,
    RunEnded,
    RunHidden,
    RunNotFound,
)
from sluiceway.planner.domain.chunks import PlanError
from sluiceway.planner.scheduler import (
    FeedBehind,
    Scheduler,
    ScheduleTaken,
    ScheduleView,
    installer,
)
from sluiceway.v1 import control_pb2 as cpb
from sluiceway.v1 import control_pb2_grpc
from sluiceway.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


# Bounds on free-form request fields: every accepted value ends up in an event, and events stay
# small (a request under 64 KiB; the run stream's 1 MiB limit is there for a plan's chunk list).
MAX_TEXT = 256
MAX_REASON = 1024
MAX_OPTIONS = 32
MAX_CONFIG_BYTES = 1 << 20
# RunRequested (spec + options + requested_by) must fit 64 KiB with room for the envelope and
# the headers.
MAX_REQUEST_EVENT_BYTES = 60 * 1024


def oversized_event(spec: ExportSpec, which: str, request: cpb.SubmitRunRequest) -> str | None:
    """The request's RunRequested would be refused by the stream: say so, naming the biggest
    contributor (each field is within its own bound, but not all of them at once)."""
    body = RunRequested(spec=spec, requested_by=request.requested_by, options=dict(request.options))
    size = codec.to_message(body, pb.RunRequested()).ByteSize()
    if size <= MAX_REQUEST_EVENT_BYTES:
        return None
    options = sum(len(k.encode()) + len(v.encode()) for k, v in request.options.items())
    field = "options" if options * 2 > size else which
    return (
        f"{field}: the run request would be a {size}-byte event "
        f"(at most {MAX_REQUEST_EVENT_BYTES}): make the options or the export smaller"
    )


def request_problem(request: cpb.SubmitRunRequest | cpb.CancelRunRequest) -> str | None:
    """The first out-of-bounds field of a request, named, or None."""
    if isinstance(request, cpb.CancelRunRequest):
        if len(request.reason) > MAX_REASON:
            return f"reason: at most {MAX_REASON} characters"
        if len(request.requested_by) > MAX_TEXT:
            return f"requested_by: at most {MAX_TEXT} characters"
        return None
    if len(request.requested_by) > MAX_TEXT:
        return f"requested_by: at most {MAX_TEXT} characters"
    if len(request.options) > MAX_OPTIONS:
        return f"options: at most {MAX_OPTIONS} entries"
    for key, value in request.options.items():
        if not key or len(key) > MAX_TEXT or len(value) > MAX_REASON:
            return f"options[{key[:40]!r}]: keys 1-{MAX_TEXT} characters, values <= {MAX_REASON}"
    if len(request.config.text.encode()) > MAX_CONFIG_BYTES:
        return f"config.text: at most {MAX_CONFIG_BYTES} bytes"
    return None


MAX_SCHEDULE_SPECS = 1000
MAX_UPCOMING = 50


def schedule_info(view: ScheduleView) -> cpb.ScheduleInfo:
    info = cpb.ScheduleInfo(revision=view.item.revision, change=view.change)
    codec.to_message(view.item.spec, info.spec)
    for t in view.next:
        info.next.add().CopyFrom(codec.timestamp(t))
    return info


def requester(principal: Principal, claimed: str) -> str:
    """The run's requested_by: the authenticated principal; with authentication off there is
    none, and the client's own label is recorded as given."""
    if principal is ANONYMOUS:
        return claimed or principal.name
    return principal.name


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        planner: Planner,
        scheduler: Scheduler | None = None,
        *,
        audit: authn.Audit | None = None,
    ) -> None:
        self._planner = planner
        self._scheduler = scheduler
        self._audit = audit or authn.Audit()

    async def _allowed(
        self, action: Action, method: str, context: grpc.aio.ServicerContext
    ) -> Principal:
        """The caller, if its role allows `action`; else PERMISSION_DENIED (audited)."""
        principal = authn.caller()
        if principal is None:  # served without the interceptor: refuse, never serve openly
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        if not may(principal, action):
            self._audit.denied(method, "role", principal.name)
            what = action.value.replace("_", " ")
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.role.value} {principal.name!r} may not {what}",
            )
        return principal

    async def _spec(
        self,
        request: cpb.SubmitRunRequest | cpb.PlanRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> ExportSpec:
        which = request.WhichOneof("export")
        try:
            if which == "spec":
                return self._planner.check_spec(codec.from_message(request.spec, ExportSpec))
            if which == "config":
                doc = request.config
                return self._planner.check_config(
                    doc.text, doc.export_name, doc.base_dir, doc.file_name
                )
        except ConfigError as exc:
            # an error inside the export names its field; one about the whole document (not
            # YAML, no such export) names the request field
            details = str(exc) if exc.field else f"{which}: {exc}"
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, redact(details))
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, "export: one of spec or config is required"
        )

    async def SubmitRun(
        self, request: cpb.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SubmitRunResponse:
        principal = await self._allowed(Action.SUBMIT, "SubmitRun", context)
        if problem := request_problem(request):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if request.priority not in (0, *PRIORITIES.values()):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"priority: {request.priority} is not 1 (low), 2 (normal) or 3 (high)",
            )
        spec = await self._spec(request, context)
        if problem := oversized_event(spec, request.WhichOneof("export") or "spec", request):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            # the run's trace ids follow from its run id (telemetry.run_trace_ids); the gRPC
            # server span of this call is linked from the trace's "run requested" span
            run_id, seq = await self._planner.submit(
                spec,
                requested_by=requester(principal, request.requested_by),
                options=dict(request.options),
                priority=request.priority,
                owner=Owner(principal.name, principal.team),
            )
        except ExportBusy as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except FeedBehind as exc:  # the one-run-at-a-time check could not see the whole log
            log.warning("SubmitRun: %s", exc)
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the planner is still reading the run log to check for a run in flight: retry",
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("SubmitRun: the run log is unavailable: %s", exc)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the run log is unavailable: retry")
        return cpb.SubmitRunResponse(run_id=run_id, export_name=spec.name, stream_seq=seq)

    async def PlanRun(
        self, request: cpb.PlanRunRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PlanRunResponse:
        await self._allowed(Action.PLAN, "PlanRun", context)
        spec = await self._spec(request, context)
        try:
            plan, warnings = await self._planner.dry_run(spec)
        except PlanError as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, redact(str(exc)))
        except SourceError as exc:
            code = (
                grpc.StatusCode.UNAVAILABLE
                if exc.retryable
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await abort(context, code, redact(str(exc)))
        response = cpb.PlanRunResponse()
        codec.to_message(plan, response.plan)
        for w in warnings:
            codec.to_message(w, response.warnings.add())
        codec.to_message(spec, response.spec)
        return response

    async def CancelRun(
        self, request: cpb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> cpb.CancelRunResponse:
        principal = await self._allowed(Action.READ, "CancelRun", context)
        if not request.run_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        if problem := request_problem(request):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            seq = await self._planner.cancel(
                request.run_id,
                reason=request.reason,
                requested_by=requester(principal, request.requested_by),
                by=principal,
            )
        except InvalidRunId as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CancelDenied as exc:
            self._audit.denied("CancelRun", "role", principal.name, request.run_id)
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except RunHidden:
            self._audit.denied("CancelRun", "not_owner", principal.name, request.run_id)
            await abort(context, grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")
        except (RunNotFound, codec.Poison):
            # Poison: what sits on the run's 'requested' subject is not a readable request
            await abort(context, grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} not found")
        except RunEnded as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("CancelRun: the run log is unavailable: %s", exc)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the run log is unavailable: retry")
        return cpb.CancelRunResponse(run_id=request.run_id, stream_seq=seq)

    async def ApplySchedules(
        self, request: cpb.ApplySchedulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ApplySchedulesResponse:
        principal = await self._allowed(Action.APPLY_SCHEDULES, "ApplySchedules", context)
        if self._scheduler is None:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "the scheduler is off in this planner"
            )
        if len(request.specs) > MAX_SCHEDULE_SPECS:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"specs: at most {MAX_SCHEDULE_SPECS}"
            )
        if len(request.applied_by) > MAX_TEXT:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"applied_by: at most {MAX_TEXT} characters",
            )
        specs: list[ExportSpec] = []
        for i, msg in enumerate(request.specs):
            try:
                specs.append(self._planner.check_spec(codec.from_message(msg, ExportSpec)))
            except ConfigError as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, redact(f"specs[{i}]: {exc}"))
        if len({s.name for s in specs}) != len(specs):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "specs: an export is named twice"
            )
        try:
            views = await self._scheduler.apply(
                specs,
                by=requester(principal, request.applied_by),
                team=principal.team,
                may_replace=functools.partial(can_see, principal),
            )
        except ScheduleTaken as exc:
            self._audit.denied("ApplySchedules", "not_owner", principal.name)
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("ApplySchedules: the schedules bucket is unavailable: %s", exc)
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, "the schedules are unavailable: retry"
            )
        return cpb.ApplySchedulesResponse(schedules=[schedule_info(v) for v in views])

    async def ListSchedules(
        self, request: cpb.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListSchedulesResponse:
        principal = await self._allowed(Action.LIST_SCHEDULES, "ListSchedules", context)
        if self._scheduler is None:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "the scheduler is off in this planner"
            )
        if not 0 <= request.upcoming <= MAX_UPCOMING:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"upcoming: from 0 to {MAX_UPCOMING}"
            )
        try:
            views = await self._scheduler.list(request.upcoming or 3)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("ListSchedules: the schedules bucket is unavailable: %s", exc)
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, "the schedules are unavailable: retry"
            )
        mine = [v for v in views if can_see(principal, installer(v.item))]
        return cpb.ListSchedulesResponse(schedules=[schedule_info(v) for v in mine])
