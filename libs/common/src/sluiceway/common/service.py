"""Process plumbing shared by the service entry points: signals, the ready file, tracing setup
and teardown, the metrics endpoint and the health server of services without a gRPC API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from sluiceway.common import crash, telemetry
from sluiceway.common.metrics import MetricsServer, reachable_host
from sluiceway.common.settings import Settings, SettingsError, split_addr

log = logging.getLogger(__name__)

Serve = Callable[[Settings, asyncio.Event], Awaitable[None]]


def write_ready_file(path: str, **info: Any) -> None:
    """Atomically write {"pid": ..., **info} once the service is serving. Tests and `sluiceway up`
    wait for it to learn bound ports (services may bind port 0)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, target)


async def every(
    interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run `step` every `interval_s` until `stop`. A step that fails is logged and tried again
    at the next interval (the loops that use this repeat idempotent work)."""
    while not stop.is_set():
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s failed; trying again in %.1f s", what, interval_s, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the signal to shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def start_metrics(settings: Settings, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve /metrics on SLUICEWAY_METRICS_ADDR (None when it is empty). Raises OSError when
    the address cannot be bound."""
    if not settings.metrics_addr:
        return None
    host, port = split_addr(settings.metrics_addr, "SLUICEWAY_METRICS_ADDR")
    server = MetricsServer(registry)
    bound = server.start(host, port)
    log.info("metrics on http://%s/metrics", bound)
    return server


def serving_status(ok: bool) -> int:
    return int(
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )


class HealthServer:
    """grpc.health.v1 on SLUICEWAY_HEALTH_ADDR, for services that serve no gRPC API (worker,
    committer), so that Kubernetes' native gRPC probes can ask them. NOT_SERVING until
    `serving()`; `stop()` says NOT_SERVING first, then stops the server with grace."""

    def __init__(self) -> None:
        self._servicer = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.bound = ""

    async def start(self, addr: str) -> str:
        host, _ = split_addr(addr, "SLUICEWAY_HEALTH_ADDR")
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        port = server.add_insecure_port(addr)
        if port == 0:
            raise OSError(f"cannot bind the health server on {addr}")
        await self._servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        self.bound = f"{reachable_host(host)}:{port}"
        return self.bound

    async def serving(self) -> None:
        await self._servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def set(self, name: str, ok: bool) -> None:
        """The status of one named service (a readiness probe may ask for it by name)."""
        await self._servicer.set(name, serving_status(ok))

    async def stop(self, grace_s: float) -> None:
        with contextlib.suppress(Exception):
            await self._servicer.enter_graceful_shutdown()  # NOT_SERVING, and stays so
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None


def run(name: str, serve: Serve) -> None:
    """The entry point of `python -m sluiceway.<name>`: JSON logs, tracing (OTEL_*), settings
    from the environment (a bad one exits 1 with one line naming the variable), then serve
    until SIGTERM; the spans still buffered are flushed last."""
    telemetry.init_logging(name)
    try:
        provider = telemetry.init_tracing(name)
        settings = Settings.from_env()
        crash.arm(os.environ.get(crash.ENV, ""))
    except (SettingsError, crash.UnknownCrashPoint, telemetry.TracingConfigError) as exc:
        print(f"sluiceway-{name}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

    async def main() -> None:
        await serve(settings, stop_event())

    try:
        asyncio.run(main())
    except SettingsError as exc:  # found while starting (e.g. a TLS or principals file)
        print(f"sluiceway-{name}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        telemetry.shutdown_tracing(provider)
