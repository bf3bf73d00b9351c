"""Authentication of the gRPC APIs: one server interceptor for Control and Tracker, the caller
of the current request, and the audit of refused requests (a metric and a log line)."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from sluiceway.common.domain.access import ANONYMOUS, Principal
from sluiceway.common.principals import AuthFailure, PrincipalsFile, identify, utcnow
from sluiceway.common.rpc import abort
from sluiceway.common.tlsfiles import peer_identity

log = logging.getLogger(__name__)

# Probes and tooling must work without a credential; they disclose nothing about runs.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "sluiceway_caller", default=None
)


def caller() -> Principal | None:
    """The authenticated caller of the request being served; None outside the interceptor
    (a servicer must then refuse: fail closed)."""
    return _caller.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Serve what runs inside as `principal` (the interceptor, and tests of servicers)."""
    token = _caller.set(principal)
    try:
        yield
    finally:
        _caller.reset(token)


class Audit:
    """Refused requests: `sluiceway_auth_denied_total{method,reason}` and one log line each
    (principal, method, run; never the credential)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._denied = Counter(
            "sluiceway_auth_denied_total",
            "Requests refused: no or bad credential, a role that may not, a run not the caller's",
            ["method", "reason"],
            registry=registry,
        )

    def denied(self, method: str, reason: str, principal: str = "", run_id: str = "") -> None:
        self._denied.labels(method, reason).inc()
        log.warning(
            "request denied: method=%s principal=%s reason=%s run=%s",
            method,
            principal or "-",
            reason,
            run_id or "-",
            extra={"run_id": run_id},
        )


class Authenticator:
    """Who is calling: from a bearer token or a verified client certificate, against the
    principals file (None: authentication is off, every caller is ANONYMOUS)."""

    def __init__(
        self, principals: PrincipalsFile | None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self._principals = principals
        self._now = now

    @property
    def enabled(self) -> bool:
        return self._principals is not None

    def authenticate(self, authorization: str | None, subject: str | None) -> Principal:
        if self._principals is None:
            return ANONYMOUS
        return identify(self._principals.current(), authorization, subject, self._now())


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call except health and reflection, and serves it as its caller
    (`caller()`); a call without a valid credential ends UNAUTHENTICATED before any servicer
    code runs."""

    def __init__(self, authenticator: Authenticator, audit: Audit) -> None:
        self._authn = authenticator
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        return _guarded(handler, method, self._identify)

    async def _identify(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        try:
            return self._authn.authenticate(_authorization(context), peer_identity(context))
        except AuthFailure as exc:
            self._audit.denied(method, exc.reason)
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))


Identify = Callable[[str, grpc.aio.ServicerContext], Awaitable[Principal]]


def _guarded(handler: grpc.RpcMethodHandler, method: str, identify: Identify) -> Any:
    """The same handler, its behaviour run as the authenticated caller."""

    def wrap(behavior: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with acting_as(await identify(method, context)):
                    async for item in behavior(request, context):
                        yield item

            return stream
        if handler.response_streaming:
            # a streaming method that answers with context.write() (WatchRun: it bounds each
            # write's wait) is served as a generator that yields nothing: interceptors further
            # out may iterate the behaviour (OpenTelemetry's aio server interceptor does)

            async def writes(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with acting_as(await identify(method, context)):
                    await behavior(request, context)
                return
                yield  # pragma: no cover - makes this an async generator

            return writes

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with acting_as(await identify(method, context)):
                return await behavior(request, context)

        return call

    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        wrap(getattr(handler, attr)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
