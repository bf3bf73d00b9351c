"""Composition root of the committer: wires the bus and the `committer-runs` consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sluiceway.committer.app import Committer, SourceFactory
from sluiceway.common import bus as busmod
from sluiceway.common import metrics, service, sources
from sluiceway.common.consumer import RunEventConsumer
from sluiceway.common.domain.events import Producer
from sluiceway.common.runtrace import TracedRunLog
from sluiceway.common.settings import Settings
from sluiceway.common.sources import open_source

log = logging.getLogger(__name__)

SERVICE = "committer"
DURABLE = "committer-runs"
GRACE_S = 5.0


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    source_factory: SourceFactory | None = open_source,
) -> None:
    """Run the committer until `stop` is set. `source_factory` replaces open_source for the
    reconciliation count (tests); None counts with the chunks' own tallies."""
    nc = await busmod.connect_unless_stopped(
        settings.nats_url,
        name=f"{SERVICE}-{settings.instance}",
        stop=stop,
        options=settings.nats_options(),
    )
    if nc is None:
        return
    consumer: RunEventConsumer | None = None
    metrics_server: metrics.MetricsServer | None = None
    health = service.HealthServer()
    try:
        bus = busmod.Bus(nc, settings.names)
        await bus.ensure_streams(settings.stream_settings())
        registry = metrics.new_registry()
        run_log = TracedRunLog(bus, metrics.RunMetrics(registry))
        committer = Committer(
            run_log,
            producer=Producer(SERVICE, settings.instance),
            source_factory=source_factory,
        )
        consumer = RunEventConsumer(
            bus,
            DURABLE,
            [settings.names.runs_all],
            committer.handle,
            ack_wait_s=settings.consumer_ack_wait_s,
            after_message=run_log.after_message,
        )
        await consumer.start()
        metrics.consumer_lag(registry).labels(DURABLE).set_function(
            metrics.loop_probe(asyncio.get_running_loop(), consumer.pending)
        )
        metrics_server = service.start_metrics(settings, registry)
        if settings.health_addr:
            await health.start(settings.health_addr)
        await asyncio.to_thread(sources.preload)  # drivers imported before ready
        await health.serving()
        service.write_ready_file(
            settings.ready_file,
            service=SERVICE,
            metrics_addr=metrics_server.bound if metrics_server else "",
            health_addr=health.bound,
        )
        log.info("committer consuming %s", settings.names.runs_all)
        consuming = asyncio.create_task(consumer.run(stop))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({consuming, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if consuming in done:
            consuming.result()
        stop.set()
        await consuming
        stopped.cancel()
    finally:
        # reverse order: health NOT_SERVING -> consumer -> NATS -> metrics (telemetry is
        # flushed by service.run, last)
        await health.stop(GRACE_S)
        if consumer is not None:
            await consumer.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("committer stopped")


def main() -> None:
    service.run("committer", serve)


if __name__ == "__main__":
    main()
