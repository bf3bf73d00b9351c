"""Tracing, JSON logs and process resource readings shared by every service.

A run is one trace whose ids are fixed by its run id (`run_trace_ids`): every service parents
its short spans on that context, and the run's root span is emitted once, at the end, by
whoever appends RunCompleted (`emit_span` with pinned ids). No span stays open for a whole run,
so a process that dies orphans nothing (docs/architecture.md, "Tracing").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any

import psutil
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract as _extract
from opentelemetry.propagate import inject as _inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from sluiceway.common.domain.events import ResourceUsage

run_id_var: ContextVar[str] = ContextVar("run_id", default="")
# the span context of the message being handled (its producer), set by `consuming`
_producer_var: ContextVar[SpanContext | None] = ContextVar("producer", default=None)
# ids the next span started on this thread/task must take (see PinnedIdGenerator)
_pinned_var: ContextVar[tuple[int | None, int | None]] = ContextVar(
    "pinned_ids", default=(None, None)
)

ATTR = "sluiceway."
# whether this process exports spans (init_tracing): work done only for the viewer (reading a
# run's history to emit its root span) is skipped otherwise
_exporting = False


class TracingConfigError(ValueError):
    """A bad OTEL_* value: the service refuses to start, naming the variable."""


class PinnedIdGenerator(RandomIdGenerator):
    """Random ids, except for a span started inside `_pinned(...)`: that one takes the given
    ids. The run's root span and the chunk attempts' spans have ids derived from the run, so
    that any process (the committer at the end of a run) can emit or refer to them."""

    def generate_trace_id(self) -> int:
        pinned = _pinned_var.get()[0]
        return pinned if pinned is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        pinned = _pinned_var.get()[1]
        return pinned if pinned is not None else super().generate_span_id()


@contextlib.contextmanager
def _pinned(trace_id: int | None, span_id: int | None) -> Iterator[None]:
    token = _pinned_var.set((trace_id, span_id))
    try:
        yield
    finally:
        _pinned_var.reset(token)


def _digest(*parts: str, size: int) -> int:
    raw = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size, person=b"sluiceway-otel")
    return int.from_bytes(raw.digest(), "big") or 1  # never the invalid id 0


def run_trace_ids(run_id: str) -> tuple[int, int]:
    """(trace id, root span id) of a run: fixed by the run id, so every service derives the
    same ones without reading anything."""
    return _digest("trace", run_id, size=16), _digest("root", run_id, size=8)


def attempt_span_id(run_id: str, chunk_index: int, attempt: int) -> int:
    """The span id of a chunk attempt (attempt numbers are claimed on the stream, so no two
    executions share one): a dead attempt's span can be emitted by another process."""
    return _digest("attempt", run_id, str(chunk_index), str(attempt), size=8)


def run_span_context(run_id: str) -> SpanContext:
    trace_id, span_id = run_trace_ids(run_id)
    sampled = TraceFlags(TraceFlags.SAMPLED)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=sampled)


def run_context(run_id: str) -> otel_context.Context:
    """A context whose current span is the run's root span (not yet emitted): spans started in
    it are the root's children."""
    return trace.set_span_in_context(trace.NonRecordingSpan(run_span_context(run_id)))


# ---- setup -----------------------------------------------------------------------------------


def traces_exporter(env: Mapping[str, str] | None = None) -> str:
    """'otlp' or 'none'. Unset OTEL_TRACES_EXPORTER means otlp only when an OTLP endpoint is
    configured: a service with no collector exports nothing and tries no connection."""
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    raw = e.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw == "":
        endpoint = e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or e.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raw = "otlp" if endpoint else "none"
    if raw not in ("otlp", "none"):
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={raw!r}: expected otlp or none")
    if raw == "otlp":
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = e.get(name, "").strip().lower()
            if protocol and protocol != "grpc":
                raise TracingConfigError(f"{name}={protocol!r}: only grpc is supported")
    return raw


def init_tracing(service: str, env: Mapping[str, str] | None = None) -> TracerProvider:
    """The process's tracer provider, named after the service (OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES are honoured by Resource.create). With an OTLP exporter
    (`traces_exporter`) spans go through a BatchSpanProcessor (OTEL_BSP_* tune it) to the
    endpoint of the standard OTEL_EXPORTER_OTLP_* variables, and the gRPC servers and clients
    of this process are instrumented; otherwise spans are recorded nowhere.
    Raises TracingConfigError."""
    global _exporting
    exporter = traces_exporter(env)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"sluiceway-{service}"}),
        id_generator=PinnedIdGenerator(),
    )
    if exporter == "otlp":
        # imported here: a process without a collector never loads the gRPC exporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
            filters,
        )
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # health probes (every few seconds from Kubernetes) would each be a trace of their own
        quiet = filters.negate(filters.health_check())
        server = GrpcAioInstrumentorServer(filter_=quiet)  # type: ignore[no-untyped-call]
        server.instrument(tracer_provider=provider)
        client = GrpcAioInstrumentorClient(filter_=quiet)  # type: ignore[no-untyped-call]
        client.instrument(tracer_provider=provider)
    trace.set_tracer_provider(provider)
    _exporting = exporter != "none"
    return provider


def exporting() -> bool:
    """True once init_tracing configured an exporter in this process."""
    return _exporting


def flush(timeout_ms: int = 5_000) -> bool:
    """Export what the batch processor holds now (blocking: call it off the event loop)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    return bool(force_flush(timeout_ms)) if force_flush is not None else True


def shutdown_tracing(provider: TracerProvider) -> None:
    """Flush and stop the exporter: the last step of a service's teardown."""
    provider.shutdown()


# ---- spans -----------------------------------------------------------------------------------


def _attrs(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k if "." in k else ATTR + k: v for k, v in attributes.items()}


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    parent: otel_context.Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    links: Sequence[SpanContext] = (),
    link_producer: bool = False,
    start_time_ns: int | None = None,
    span_id: int | None = None,
    **attributes: str | int,
) -> Iterator[trace.Span]:
    """A span, child of `parent`, else of the W3C context carried by `headers`, else of the
    current span. `link_producer` links it to the message being handled (`consuming`);
    `span_id` pins its id (chunk attempts). Events appended inside it carry its traceparent;
    attributes are named `sluiceway.<key>`."""
    tracer = trace.get_tracer("sluiceway")
    context = parent if parent is not None else extract(headers) if headers is not None else None
    all_links = [Link(c) for c in links if c.is_valid]
    producer = _producer_var.get() if link_producer else None
    if producer is not None:
        all_links.append(Link(producer))
    with _pinned(None, span_id):
        started = tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=_attrs(attributes),
            links=all_links,
            start_time=start_time_ns,
        )
    with trace.use_span(started, end_on_exit=True) as current:
        yield current


def emit_span(
    name: str,
    *,
    start_ns: int,
    end_ns: int,
    trace_id: int | None = None,
    span_id: int | None = None,
    parent: otel_context.Context | None = None,
    error: str | None = None,
    links: Sequence[SpanContext] = (),
    **attributes: str | int,
) -> None:
    """A span that is over already, recorded at once with the given timings and ids: the run's
    root span (no parent, pinned trace and span ids) or a chunk attempt that died."""
    tracer = trace.get_tracer("sluiceway")
    with _pinned(trace_id, span_id):
        done = tracer.start_span(
            name,
            context=parent if parent is not None else otel_context.Context(),
            attributes=_attrs(attributes),
            links=[Link(c) for c in links if c.is_valid],
            start_time=start_ns,
        )
    if error is not None:
        done.set_status(Status(StatusCode.ERROR, error))
    done.end(end_time=max(start_ns, end_ns))


@contextlib.contextmanager
def consuming(run_id: str, headers: Mapping[str, str] | None) -> Iterator[None]:
    """Handle one message of a run: the current span is the run's root context (log lines and
    spans belong to the run's trace) and the message's producer is remembered for
    `span(link_producer=True)`."""
    producer = trace.get_current_span(extract(headers)).get_span_context()
    tokens = (
        run_id_var.set(run_id),
        _producer_var.set(producer if producer.is_valid else None),
    )
    attached = otel_context.attach(run_context(run_id)) if run_id else None
    try:
        yield
    finally:
        if attached is not None:
            otel_context.detach(attached)
        _producer_var.reset(tokens[1])
        run_id_var.reset(tokens[0])


def current_span_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


def set_error(current: trace.Span, message: str) -> None:
    current.set_status(Status(StatusCode.ERROR, message))


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current W3C traceparent into message headers."""
    _inject(headers)


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    return _extract(dict(headers or {}))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with trace_id, span_id and run_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        span = trace.get_current_span().get_span_context()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
            out["span_id"] = f"{span.span_id:016x}"
        run_id = getattr(record, "run_id", "") or run_id_var.get()
        if run_id:
            out["run_id"] = run_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def init_logging(service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("SLUICEWAY_LOG_LEVEL", "INFO").upper())
    logging.getLogger("nats").setLevel(logging.WARNING)
    # while NATS is unreachable the client logs a traceback per reconnect; bus.connect says it once
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)


class ResourceProbe:
    """RSS and CPU of this process, read before and after each unit of work."""

    def __init__(self) -> None:
        self._proc = psutil.Process()

    def read(self) -> tuple[float, float]:
        with self._proc.oneshot():
            rss_mb = self._proc.memory_info().rss / (1024 * 1024)
            cpu = self._proc.cpu_times()
        return rss_mb, cpu.user + cpu.system

    def usage(self, before: tuple[float, float]) -> ResourceUsage:
        after = self.read()
        return ResourceUsage(
            rss_mb_before=round(before[0], 1),
            rss_mb_after=round(after[0], 1),
            cpu_seconds_before=round(before[1], 3),
            cpu_seconds_after=round(after[1], 3),
        )
