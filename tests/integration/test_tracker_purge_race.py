"""A tracker replica that started reading the run stream just before another tracker archived
and purged events it had not applied: the purged events are in the archive, and the replica
must read them from there instead of going on without them (a consumer started below the
stream's first sequence silently delivers from the first one there is)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluiceway.common.bus import Bus
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.app import Db, Projection
from sluiceway.tracker.archive import Archive
from tests.support.eventually import eventually
from tests.unit.histories import History

pytestmark = pytest.mark.integration


@pytest.fixture
async def archived(bus: Bus, tmp_path: Path) -> AsyncIterator[tuple[Archive, int]]:
    """Two ended runs appended, archived as one segment and purged from the stream."""
    last = 0
    for history in (
        History("run-a").planned(1).chunk_done(0).committed(),
        History("run-b").planned(2).chunk_done(0).chunk_done(1).committed(),
    ):
        for event in history.events:
            last = (await bus.append(event)).seq
    archive = Archive(str(tmp_path / "archive"), bus.names.namespace)
    archive.write(await bus.stored_range(1, last + 1))
    await bus.js.purge_stream(bus.names.runs_stream, seq=last + 1)
    assert await bus.stream_first_seq() == last + 1
    yield archive, last


@contextlib.asynccontextmanager
async def _replica(bus: Bus, archive: Archive, tmp_path: Path) -> AsyncIterator[Projection]:
    store = await asyncio.to_thread(TrackerStore, tmp_path / "replica.duckdb")
    projection = Projection(bus, Db(store), batch_wait_s=0.05, archive=archive)
    await projection.start()
    real = projection._from_archive
    calls = 0

    async def stale_first_look() -> None:
        # the race: its first look at the stream came just before the purge (nothing to read
        # from the archive yet); every later look is the real one
        nonlocal calls
        calls += 1
        if calls > 1:
            await real()

    projection._from_archive = stale_first_look  # type: ignore[method-assign]
    task = asyncio.create_task(projection.run())
    try:
        yield projection
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_replica_idle_after_the_purge_reads_the_archive(
    bus: Bus, archived: tuple[Archive, int], tmp_path: Path
) -> None:
    archive, last = archived
    async with _replica(bus, archive, tmp_path) as projection:
        await eventually(
            lambda: projection.applied_seq == last, timeout_s=20, what="the archived events applied"
        )


async def test_a_replica_that_meets_a_later_event_first_reads_the_archive(
    bus: Bus, archived: tuple[Archive, int], tmp_path: Path
) -> None:
    archive, last = archived
    later = History("run-c").planned(1).events
    for event in later:
        await bus.append(event)
    async with _replica(bus, archive, tmp_path) as projection:
        await eventually(
            lambda: projection.applied_seq == last + len(later),
            timeout_s=20,
            what="the archived events, then the later ones, applied",
        )
        # every event of the archived runs is in the read model, not only the later run's
        db = projection._db
        journals = [await db.call(db.store.journal, run) for run in ("run-a", "run-b")]
        assert sum(len(j) for j in journals) == last
