"""Tracing, JSON logs and process resource readings shared by every service."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import psutil
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract as _extract
from opentelemetry.propagate import inject as _inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from sluiceway.common.domain.events import ResourceUsage

run_id_var: ContextVar[str] = ContextVar("run_id", default="")


def init_tracing(service: str) -> TracerProvider:
    """A tracer provider named after the service. Exporters are configured by OTEL_* variables
    (none by default, so spans cost little and go nowhere)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"sluiceway-{service}"}))
    trace.set_tracer_provider(provider)
    return provider


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    **attributes: str | int,
) -> Iterator[trace.Span]:
    """A span, child of the W3C context carried by `headers` when given (a consumer continues
    its producer's trace). Events appended inside it carry its traceparent."""
    tracer = trace.get_tracer("sluiceway")
    context = extract(headers) if headers is not None else None
    with tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes
    ) as current:
        yield current


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
