"""Composition root of the committer: wires the bus and the `committer-runs` consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sluiceway.committer.app import Committer, SourceFactory
from sluiceway.common import bus as busmod
from sluiceway.common import service, sources
from sluiceway.common.consumer import RunEventConsumer
from sluiceway.common.domain.events import Producer
from sluiceway.common.settings import Settings
from sluiceway.common.sources import open_source

log = logging.getLogger(__name__)

SERVICE = "committer"
DURABLE = "committer-runs"


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    source_factory: SourceFactory | None = open_source,
) -> None:
    """Run the committer until `stop` is set. `source_factory` replaces open_source for the
    reconciliation count (tests); None counts with the chunks' own tallies."""
    nc = await busmod.connect_unless_stopped(
        settings.nats_url, name=f"{SERVICE}-{settings.instance}", stop=stop
    )
    if nc is None:
        return
    consumer: RunEventConsumer | None = None
    try:
        bus = busmod.Bus(nc, settings.names)
        await bus.ensure_streams(busmod.StreamSettings(replicas=settings.stream_replicas))
        committer = Committer(
            bus,
            producer=Producer(SERVICE, settings.instance),
            source_factory=source_factory,
        )
        consumer = RunEventConsumer(
            bus,
            DURABLE,
            [settings.names.runs_all],
            committer.handle,
            ack_wait_s=settings.consumer_ack_wait_s,
        )
        await consumer.start()
        await asyncio.to_thread(sources.preload)  # drivers imported before ready
        service.write_ready_file(settings.ready_file, service=SERVICE)
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
        if consumer is not None:
            await consumer.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        log.info("committer stopped")


def main() -> None:
    service.run("committer", serve)


if __name__ == "__main__":
    main()
