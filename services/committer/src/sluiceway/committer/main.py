"""Composition root of the committer: wires the bus, the `committer-runs` consumer and, with
SLUICEWAY_WEBHOOK_URL set, the `committer-notify` consumer of ended runs (notify.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sluiceway.committer.app import Committer, SourceFactory
from sluiceway.committer.notify import Notifier, where
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
NOTIFY_DURABLE = "committer-notify"
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
    notifications: RunEventConsumer | None = None
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
        lag = metrics.consumer_lag(registry)
        lag.labels(DURABLE).set_function(
            metrics.loop_probe(asyncio.get_running_loop(), consumer.pending)
        )
        if settings.webhook_url:
            notifier = Notifier(
                bus,
                settings.webhook_url,
                secret=settings.webhook_secret,
                wanted=settings.webhook_on,
            )
            notifications = RunEventConsumer(
                bus,
                NOTIFY_DURABLE,
                notifier.subjects,
                notifier.handle,
                ack_wait_s=settings.consumer_ack_wait_s,
                deliver_new=True,  # enabling notifications never notifies the history
            )
            await notifications.start()
            lag.labels(NOTIFY_DURABLE).set_function(
                metrics.loop_probe(asyncio.get_running_loop(), notifications.pending)
            )
            log.info("webhook notifications to %s", where(settings.webhook_url))
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
        loops = [asyncio.create_task(c.run(stop)) for c in (consumer, notifications) if c]
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*loops, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in loops:
            if task in done:
                task.result()
        stop.set()
        await asyncio.gather(*loops)
        stopped.cancel()
    finally:
        # reverse order: health NOT_SERVING -> consumer -> NATS -> metrics (telemetry is
        # flushed by service.run, last)
        await health.stop(GRACE_S)
        for c in (consumer, notifications):
            if c is not None:
                await c.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("committer stopped")


def main() -> None:
    service.run("committer", serve)


if __name__ == "__main__":
    main()
