"""Composition root of the planner: wires the bus, the Control API and the request consumer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from datetime import timedelta

from sluiceway.common import bus as busmod
from sluiceway.common import metrics, service, sources
from sluiceway.common.apiserver import ApiServer, api_security
from sluiceway.common.consumer import RunEventConsumer
from sluiceway.common.domain.events import Producer
from sluiceway.common.runtrace import TracedRunLog
from sluiceway.common.settings import Settings
from sluiceway.common.sources import open_source
from sluiceway.planner.adapters.runfeed import JetStreamRunFeed
from sluiceway.planner.adapters.schedules import ScheduleBucket
from sluiceway.planner.adapters.servicer import ControlServicer
from sluiceway.planner.adapters.snapshots import SnapshotKeeper
from sluiceway.planner.app import Planner, SourceFactory
from sluiceway.planner.scheduler import FileClock, Scheduler, feed_subjects, utcnow
from sluiceway.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "planner"
CONTROL = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
GRACE_S = 5.0


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    source_factory: SourceFactory | None = None,
) -> None:
    """Run the planner until `stop` is set. `source_factory` replaces open_source (tests)."""
    registry = metrics.new_registry()
    security = api_security(settings, registry)  # a bad setting fails before anything starts
    nc = await busmod.connect_unless_stopped(
        settings.nats_url,
        name=f"{SERVICE}-{settings.instance}",
        stop=stop,
        options=settings.nats_options(),
    )
    if nc is None:
        return
    api: ApiServer | None = None
    consumer: RunEventConsumer | None = None
    scheduler: Scheduler | None = None
    feed: JetStreamRunFeed | None = None
    keeper: SnapshotKeeper | None = None
    metrics_server: metrics.MetricsServer | None = None
    try:
        bus = busmod.Bus(nc, settings.names)
        await bus.ensure_streams(settings.stream_settings())
        backfilled = await bus.backfill_state()  # once: a log that predates the export state
        if backfilled:
            log.info("export state backfilled from the run stream: %d fact(s)", backfilled)
        keeper = SnapshotKeeper(bus.run_stopped, max_hold_s=settings.snapshot_max_hold_s)
        run_log = TracedRunLog(bus, metrics.RunMetrics(registry))
        names = settings.names
        if settings.scheduler:
            feed = JetStreamRunFeed(bus, feed_subjects(names))
            scheduler = Scheduler(
                run_log,
                ScheduleBucket(
                    bus.js,
                    f"{names.namespace.upper()}_SCHEDULES",
                    replicas=settings.stream_replicas,
                ),
                feed,
                producer=Producer("scheduler", settings.instance),
                clock=FileClock(settings.clock_file) if settings.clock_file else utcnow,
                grace=timedelta(seconds=settings.scheduler_grace_s),
                max_open=timedelta(seconds=settings.runs_max_age_s),
                tick_s=settings.scheduler_tick_s,
                after_tick=run_log.after_message,
            )
        planner = Planner(
            run_log,
            producer=Producer(SERVICE, settings.instance),
            source_factory=source_factory or functools.partial(open_source, env=os.environ),
            env=os.environ,
            keeper=keeper,
            holding_run=scheduler.holding_run if scheduler is not None else None,
        )
        consumer = RunEventConsumer(
            bus,
            "planner-requests",
            [names.runs_of_kind("requested"), names.runs_of_kind("cancel_requested")],
            planner.handle,
            ack_wait_s=settings.consumer_ack_wait_s,
            spans={"requested": "plan run", "cancel_requested": "cancel run"},
            after_message=run_log.after_message,
        )
        await consumer.start()
        metrics.consumer_lag(registry).labels(consumer.durable).set_function(
            metrics.loop_probe(asyncio.get_running_loop(), consumer.pending)
        )
        metrics_server = service.start_metrics(settings, registry)

        api = ApiServer(security, (CONTROL,), settings.health_addr)
        control_pb2_grpc.add_ControlServicer_to_server(  # type: ignore[no-untyped-call]
            ControlServicer(planner, scheduler, audit=security.audit), api.server
        )
        bound = await api.start(settings.control_addr, "SLUICEWAY_CONTROL_ADDR")
        await asyncio.to_thread(sources.preload)  # drivers imported before ready
        service.write_ready_file(
            settings.ready_file,
            service=SERVICE,
            control_addr=bound,
            metrics_addr=metrics_server.bound if metrics_server else "",
            health_addr=api.probe.bound if api.probe else "",
        )

        consuming = asyncio.create_task(consumer.run(stop))
        loops = {consuming}
        if scheduler is not None:
            loops.add(asyncio.create_task(scheduler.run(stop)))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*loops, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for loop in loops & done:
            loop.result()  # the loops only return on stop; surface a crash
        stop.set()
        for loop in loops:
            await loop
        stopped.cancel()
    finally:
        # reverse order: health NOT_SERVING -> gRPC with grace -> consumers -> NATS
        if api is not None:
            await api.stop(GRACE_S)
        if consumer is not None:
            await consumer.stop()
        if scheduler is not None:
            await scheduler.close()
        if keeper is not None:  # before NATS goes: the snapshots' sessions end here
            await keeper.close()
        with contextlib.suppress(Exception):
            await nc.drain()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("planner stopped")


def main() -> None:
    service.run("planner", serve)


if __name__ == "__main__":
    main()
