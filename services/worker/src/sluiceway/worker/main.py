"""Composition root of the worker: settings, NATS, the task consumer and the fetch loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

import pyarrow as pa
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from sluiceway.common import bus as busmod
from sluiceway.common import metrics, service, sources, telemetry
from sluiceway.common.settings import Settings
from sluiceway.worker.adapters.export import FileExporter
from sluiceway.worker.adapters.tasks import JetStreamDelivery, LanePicker
from sluiceway.worker.app import ChunkWorker

log = logging.getLogger("sluiceway.worker")
FETCH_TIMEOUT_S = 1.0
BUS_ERROR_DELAY_S = 2.0
GRACE_S = 5.0


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Pull one chunk task at a time until `stop`; the task in hand is finished first."""
    nc = await busmod.connect_unless_stopped(
        settings.nats_url,
        name=f"worker-{settings.instance}",
        stop=stop,
        options=settings.nats_options(),
    )
    if nc is None:
        return
    subs: dict[int, JetStreamContext.PullSubscription] = {}
    exporter: FileExporter | None = None
    metrics_server: metrics.MetricsServer | None = None
    health = service.HealthServer()
    try:
        bus = busmod.Bus(nc, settings.names)
        await bus.ensure_streams(settings.stream_settings())
        consumer = busmod.TaskConsumerSettings(
            ack_wait_s=settings.worker_ack_wait_s, max_deliver=settings.worker_max_deliver
        )
        durables: dict[int, str] = {}
        for lane in busmod.LANES:  # one shared consumer per priority lane
            cfg = await bus.ensure_task_consumer(consumer, priority=lane)
            assert cfg.durable_name is not None
            durables[lane] = cfg.durable_name
            subs[lane] = await bus.js.pull_subscribe_bind(
                cfg.durable_name, stream=settings.names.tasks_stream
            )
        picker = LanePicker(
            bus.js, settings.names, subs, durables, aging_s=settings.priority_aging_s
        )
        registry = metrics.new_registry()

        def lag_of(durable: str) -> Callable[[], Awaitable[float]]:
            async def lag() -> float:
                info = await bus.js.consumer_info(settings.names.tasks_stream, durable)
                return float(info.num_pending or 0)

            return lag

        lag_gauge = metrics.consumer_lag(registry)
        for durable in durables.values():  # one series per priority lane's consumer
            lag_gauge.labels(durable).set_function(
                metrics.loop_probe(asyncio.get_running_loop(), lag_of(durable))
            )
        exporter = FileExporter()
        worker = ChunkWorker(
            bus,
            exporter,
            telemetry.ResourceProbe(),
            instance=settings.instance,
            heartbeat_s=settings.worker_heartbeat_s,
            backoff_ms=(settings.worker_backoff_base_ms, settings.worker_backoff_max_ms),
            consumer_max_deliver=consumer.max_deliver,
            metrics=metrics.WorkerMetrics(registry),
        )
        metrics_server = service.start_metrics(settings, registry)
        if settings.health_addr:
            await health.start(settings.health_addr)
        await asyncio.to_thread(sources.preload)  # drivers imported before ready
        await health.serving()
        service.write_ready_file(
            settings.ready_file,
            service="worker",
            instance=settings.instance,
            metrics_addr=metrics_server.bound if metrics_server else "",
            health_addr=health.bound,
        )
        log.info("worker ready: consumer %s on %s", consumer.durable, settings.names.tasks_stream)
        while not stop.is_set():
            try:
                taken = await picker.next(FETCH_TIMEOUT_S)
            except NatsTimeoutError:
                continue
            except Exception as exc:
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(BUS_ERROR_DELAY_S)
                continue
            if taken is not None:
                msg, priority = taken
                delivery = JetStreamDelivery(msg)
                try:
                    await worker.handle(delivery, priority=priority)
                except Exception:  # the bus failed mid-flight: no verdict was recorded
                    log.exception("could not record a chunk outcome; the task will be redelivered")
                    try:
                        await msg.nak(delay=BUS_ERROR_DELAY_S)
                    except Exception as exc:
                        log.warning("nak failed (ack_wait will redeliver): %s", exc)
    finally:
        # reverse order: health NOT_SERVING -> consumer -> NATS -> metrics (telemetry is
        # flushed by service.run, last)
        await health.stop(GRACE_S)
        if exporter is not None:
            exporter.close()
        log.info("worker stopping: draining NATS")
        for sub in subs.values():
            # the pull inbox would hold drain() open; unsubscribing keeps the durable consumer
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await nc.drain()
        if metrics_server is not None:
            metrics_server.stop()


def use_system_allocator(env: Mapping[str, str] = os.environ) -> str:
    """Arrow's buffers come from the C library's allocator, not mimalloc, unless the operator
    chose one (ARROW_DEFAULT_MEMORY_POOL). mimalloc keeps freed segments for reuse: one process
    exporting chunks of the bench tables peaked 25-35 MB higher with it, for the same work
    (docs/benchmarks.md). Returns the pool's backend name."""
    if not env.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


def main() -> None:
    use_system_allocator()
    service.run("worker", serve)
