"""Prometheus metrics of one process, served at /metrics on SLUICEWAY_METRICS_ADDR.

Each service registers only the metrics it produces, in its own registry (no module-level
collectors): planner and committer count the runs they end, workers the rows, bytes and chunk
durations, the tracker its projection; every consuming service reports its consumer's lag.
Names are exactly those the operations docs use (docs/architecture.md, "Metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sluiceway.common.phases import PHASES

log = logging.getLogger(__name__)

RUN_STATUSES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
# a chunk takes from a fraction of a second (a small range) to many minutes (a large table)
CHUNK_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# a phase takes from a millisecond (a kept session's connect, a small count) to a chunk's length
PHASE_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, *CHUNK_SECONDS_BUCKETS)
CHUNK_OUTCOMES = ("completed", "retry", "failed", "lost", "stopped")
PROBE_TIMEOUT_S = 2.0

# `_created` companion series double every counter's output for no use here
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class RunMetrics:
    """Runs by final status, counted by the process whose RunCompleted the stream stored: the
    once-only append admits one writer per run, so the sum over every planner and committer
    replica counts each run exactly once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "sluiceway_runs_total",
            "Runs that ended, by final status (counted by the service that appended RunCompleted)",
            ["status"],
            registry=registry,
        )
        for status in RUN_STATUSES:
            self.runs.labels(status)

    def run_ended(self, status: str) -> None:
        self.runs.labels(status).inc()


class WorkerMetrics:
    """Rows and bytes of the chunks this worker completed (the winning attempt only, so the
    sums over the workers equal the manifests), and how long each attempt took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "sluiceway_rows_exported_total",
            "Rows of the chunks this worker completed",
            registry=registry,
        )
        self.bytes = Counter(
            "sluiceway_bytes_written_total",
            "Bytes of the part files of the chunks this worker completed",
            registry=registry,
        )
        self.chunk_duration = Histogram(
            "sluiceway_chunk_duration_seconds",
            "Duration of one chunk attempt, from its claim to its outcome",
            ["outcome"],
            buckets=CHUNK_SECONDS_BUCKETS,
            registry=registry,
        )
        for outcome in CHUNK_OUTCOMES:
            self.chunk_duration.labels(outcome)
        self.chunk_phase = Histogram(
            "sluiceway_chunk_phase_seconds",
            "Busy seconds of one completed chunk attempt in each phase (read and encode overlap)",
            ["phase"],
            buckets=PHASE_SECONDS_BUCKETS,
            registry=registry,
        )
        for phase in PHASES:
            self.chunk_phase.labels(phase)

    def chunk_completed(self, rows: int, size: int) -> None:
        self.rows.inc(rows)
        self.bytes.inc(size)

    def phases_observed(self, seconds: Mapping[str, float]) -> None:
        """One completed attempt's seconds per phase (sluiceway.common.phases)."""
        for phase, value in seconds.items():
            self.chunk_phase.labels(phase).observe(value)

    def attempt_ended(self, outcome: str, seconds: float) -> None:
        self.chunk_duration.labels(outcome).observe(seconds)


class ProjectionMetrics:
    """The tracker's projection: events applied (rate = events per second) and how far it is
    behind the run stream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "sluiceway_events_total",
            "Run events applied to this tracker's read model",
            registry=registry,
        )
        self.lag = Gauge(
            "sluiceway_projection_lag",
            "Run stream last sequence minus the sequence this tracker has applied",
            registry=registry,
        )

    def applied(self, count: int) -> None:
        if count:
            self.events.inc(count)


def consumer_lag(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        "sluiceway_consumer_lag",
        "Messages waiting on the service's durable consumer (JetStream num_pending)",
        ["consumer"],
        registry=registry,
    )


async def _await(read: Callable[[], Awaitable[float]]) -> float:
    return await read()


def loop_probe(
    loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[float]]
) -> Callable[[], float]:
    """A gauge callback for the scrape thread that asks the service's event loop (NATS calls
    live there): read at scrape time, so an idle service makes no request. NaN when the
    answer does not come within PROBE_TIMEOUT_S (NATS down)."""

    def probe() -> float:
        try:
            future: Future[float] = asyncio.run_coroutine_threadsafe(_await(read), loop)
            return float(future.result(PROBE_TIMEOUT_S))
        except Exception as exc:
            log.debug("metrics probe failed: %s", exc)
            return math.nan

    return probe


def reachable_host(host: str) -> str:
    """Where a local client reaches a server bound to `host` (a wildcard is this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class MetricsServer:
    """The /metrics endpoint (prometheus_client's HTTP server, on its own thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.bound = ""

    def start(self, host: str, port: int) -> str:
        """Serve on host:port (port 0: any free port); returns the bound 'host:port'."""
        self._httpd, self._thread = prometheus_client.start_http_server(
            port, addr=host, registry=self.registry
        )
        self.bound = f"{reachable_host(host)}:{self._httpd.server_address[1]}"
        return self.bound

    def stop(self) -> None:
        if self._httpd is None:
            return
        with contextlib.suppress(Exception):
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None
