"""Composition root of the tracker: wire in order, tear down in reverse."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from sluiceway.common import bus as busmod
from sluiceway.common import metrics, service, telemetry
from sluiceway.common.apiserver import ApiServer, api_security
from sluiceway.common.settings import Settings, SettingsError
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.adapters.servicer import TrackerServicer
from sluiceway.tracker.app import Db, Projection
from sluiceway.tracker.archive import Archive, Archiver
from sluiceway.v1 import tracker_pb2, tracker_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["Tracker"].full_name
GRACE_S = 5.0


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the tracker until `stop` is set."""
    registry = metrics.new_registry()
    security = api_security(settings, registry)  # a bad setting fails before anything starts
    nc = await busmod.connect_unless_stopped(
        settings.nats_url,
        name=f"tracker-{settings.instance}",
        stop=stop,
        options=settings.nats_options(),
    )
    if nc is None:
        return
    bus = busmod.Bus(nc, settings.names)
    await bus.ensure_streams(settings.stream_settings())

    store = await asyncio.to_thread(TrackerStore, settings.tracker_db)
    db = Db(store)
    projection_metrics = metrics.ProjectionMetrics(registry)
    archive = Archive(settings.archive, settings.names.namespace) if settings.archive else None
    projection = Projection(bus, db, metrics=projection_metrics, archive=archive)
    projection_metrics.lag.set_function(
        metrics.loop_probe(asyncio.get_running_loop(), projection.lag)
    )
    await projection.start()
    projection_task = asyncio.create_task(projection.run(), name="tracker-projection")
    archiver_task: asyncio.Task[None] | None = None
    if archive is not None:  # retention: without an archive, the run stream keeps everything
        archiver = Archiver(
            bus,
            archive,
            lambda first, before: db.call(store.retained_from, first, before),
            lambda: projection.applied_seq,
            max_age=timedelta(seconds=settings.runs_max_age_s),
            max_bytes=settings.runs_max_bytes,
        )
        archiver_task = asyncio.create_task(
            archiver.run(stop, settings.archive_interval_s), name="tracker-archiver"
        )

    api = ApiServer(security, (SERVICE_NAME,), settings.health_addr)
    tracker_pb2_grpc.add_TrackerServicer_to_server(  # type: ignore[no-untyped-call]
        TrackerServicer(db, projection, audit=security.audit), api.server
    )
    bound = await api.start(settings.tracker_addr, "SLUICEWAY_TRACKER_ADDR")
    readiness = asyncio.create_task(_ready_while_whole(projection, api), name="tracker-ready")
    metrics_server = service.start_metrics(settings, registry)
    service.write_ready_file(
        settings.ready_file,
        service="tracker",
        tracker_addr=bound,
        metrics_addr=metrics_server.bound if metrics_server else "",
        health_addr=api.probe.bound if api.probe else "",
    )
    log.info("tracker db %s", settings.tracker_db)
    try:
        await stop.wait()
    finally:
        log.info("tracker stopping")
        await api.stop(GRACE_S)
        for task in (projection_task, archiver_task, readiness):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await nc.drain()
        await db.close()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("tracker stopped")


async def _ready_while_whole(projection: Projection, api: ApiServer) -> None:
    """The Tracker service is NOT_SERVING (the readiness probe takes the replica out of the
    Service) while its projection cannot catch up: neither the stream nor an archive holds the
    events it lacks. The process stays SERVING: restarting it would not bring them back."""
    while True:
        await projection.gap_changed.wait()
        projection.gap_changed.clear()
        await api.set_serving(SERVICE_NAME, not projection.gap)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sluiceway.tracker",
        description="Serve the Tracker API (no command), or rebuild its read model. "
        "Settings come from SLUICEWAY_* environment variables.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild the DuckDB read model from stream seq 1, then atomically replace it",
    )
    rebuild.add_argument(
        "--db", help="the DuckDB file to rebuild (default: SLUICEWAY_TRACKER_DB)", default=""
    )
    return p


def rebuild_command(db: str) -> int:
    """`python -m sluiceway.tracker rebuild`: progress on stderr; 1 with one line on error."""
    # imported here: serving does not need it
    from sluiceway.tracker.rebuild import RebuildError, run_rebuild

    telemetry.init_logging("tracker")
    if not os.environ.get("SLUICEWAY_LOG_LEVEL"):
        logging.getLogger().setLevel(logging.WARNING)  # the progress lines say what happens
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"sluiceway-tracker: {exc}", file=sys.stderr)
        return 1
    try:
        run_rebuild(settings, db or settings.tracker_db)
    except RebuildError as exc:
        print(f"sluiceway-tracker rebuild: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sluiceway-tracker rebuild: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "rebuild":
        raise SystemExit(rebuild_command(args.db))
    service.run("tracker", serve)
