"""The tracker's flow: read the run stream from the stored offset, apply batches, wake watchers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sluiceway.common.bus import Bus
from sluiceway.common.metrics import ProjectionMetrics
from sluiceway.tracker.adapters.projection import RawMessage, TrackerStore
from sluiceway.tracker.adapters.tables import run_of_subject
from sluiceway.tracker.archive import Archive, ArchiveGap

log = logging.getLogger(__name__)
T = TypeVar("T")
# how long the second fetch of a batch may wait: it only collects what is already stored
DRAIN_S = 0.005
# how long a projection that cannot bridge the stream's start waits before it looks again
GAP_RETRY_S = 30.0


class Db:
    """Every DuckDB call on one thread: the connection is not safe for concurrent use, and a
    read queued behind a batch sees all of it or none of it."""

    def __init__(self, store: TrackerStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracker-duckdb")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """CHECKPOINT and close, after whatever is queued (a batch being applied finishes)."""

        def _close() -> None:
            self.store.checkpoint()
            self.store.close()

        await self.call(_close)
        self._pool.shutdown(wait=True)


class Purged(Exception):
    """The run stream lost, to retention, events this projection had not applied yet."""


PURGE_CHECK_S = 2.0  # while idle, how often to look whether retention purged past the offset


class Projection:
    """Reads the whole run stream through an ephemeral consumer that starts at the stored
    offset + 1 (no durable state in NATS: the offset lives in DuckDB with the rows)."""

    def __init__(
        self,
        bus: Bus,
        db: Db,
        *,
        batch_size: int = 1000,
        batch_wait_s: float = 0.2,
        metrics: ProjectionMetrics | None = None,
        archive: Archive | None = None,
    ) -> None:
        self._bus = bus
        self._archive = archive
        self._metrics = metrics
        self._db = db
        self._batch_size = batch_size
        self._batch_wait_s = batch_wait_s
        self.applied_seq = 0
        # why the projection cannot go on ('' while it can), and an event set when that changes
        self.gap = ""
        self.gap_changed = asyncio.Event()
        self._progress = asyncio.Event()
        # per run, the marker of its next batch; a marker no watcher holds any more goes away
        self._run_markers: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    # ---- for readers --------------------------------------------------------------------

    def progress_marker(self) -> asyncio.Event:
        """An event set after the next committed batch: take it before querying, then wait on
        it, and no batch can slip between the query and the wait."""
        return self._progress

    def run_marker(self, run_id: str) -> asyncio.Event:
        """An event set after the next committed batch that holds an event of `run_id`: the
        same protocol as progress_marker, so a watcher wakes for its own run only (twenty
        watchers no longer re-query DuckDB after every batch of any run)."""
        marker = self._run_markers.get(run_id)
        if marker is None:
            marker = self._run_markers[run_id] = asyncio.Event()
        return marker

    def _notify(self, run_ids: set[str]) -> None:
        self._progress.set()
        self._progress = asyncio.Event()
        for run_id in run_ids:
            marker = self._run_markers.pop(run_id, None)
            if marker is not None:
                marker.set()

    # ---- the loop -----------------------------------------------------------------------

    async def start(self) -> None:
        self.applied_seq = await self._db.call(self._db.store.offset)
        log.info("projection resumes after seq %d", self.applied_seq)

    async def run(self) -> None:
        """Until cancelled. Any bus error recreates the consumer from the stored offset."""
        while True:
            try:
                await self._from_archive()
                self._set_gap("")
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Purged as exc:  # archived while this consumer read: the archive first
                log.info(
                    "the run stream was purged past this read model (%s); reading the archive", exc
                )
            except ArchiveGap as exc:  # nothing to serve from but a stale file: say it loudly
                log.error("the read model cannot catch up: %s", exc)
                self._set_gap(str(exc))
                await asyncio.sleep(GAP_RETRY_S)
            except Exception as exc:  # the projection never stops on a bus hiccup
                log.warning(
                    "projection consumer failed (%s); resuming after seq %d", exc, self.applied_seq
                )
                await asyncio.sleep(0.5)

    def _set_gap(self, why: str) -> None:
        if why != self.gap:
            self.gap = why
            self.gap_changed.set()

    async def _from_archive(self) -> None:
        """When the stream starts after the next event this file needs (retention purged it),
        apply the archived events first: a new replica, or a rebuild, reads the archive and
        then the stream. Raises ArchiveGap when neither holds them."""
        first = await self._bus.stream_first_seq()
        if self.applied_seq + 1 >= first:
            return
        if self._archive is not None:
            archive = self._archive
            for segment in await asyncio.to_thread(archive.after, self.applied_seq):
                messages = await asyncio.to_thread(archive.read, segment, self.applied_seq)
                for i in range(0, len(messages), self._batch_size):
                    await self._apply(messages[i : i + self._batch_size])
            log.info("applied the archive up to seq %d", self.applied_seq)
        if self.applied_seq + 1 < first:
            archive = (
                f"the archive at {self._archive.url} does not hold them"
                if self._archive
                else "SLUICEWAY_ARCHIVE is not set"
            )
            raise ArchiveGap(
                f"the run stream starts at seq {first} and this read model ends at seq "
                f"{self.applied_seq}: events {self.applied_seq + 1}..{first - 1} were archived, "
                f"and {archive} (use the archive the other trackers write)"
            )

    async def _consume(self) -> None:
        names = self._bus.names
        cfg = ConsumerConfig(
            description="tracker-projection",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied_seq + 1,
            inactive_threshold=30.0,
            mem_storage=True,
            # no filter: the run stream holds `<ns>.runs.>` only. A filter equal to it made
            # nats-server 2.15 deliver nothing to short pulls from seq 1 on a history of 5M
            # events and millions of subjects (bench/control.py); unfiltered, at once
        )
        sub = await self._bus.js.pull_subscribe("", stream=names.runs_stream, config=cfg)
        consumer_seq = 0
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    msgs = await self._fetch(sub)
                except (TimeoutError, nats.errors.TimeoutError):
                    if time.monotonic() - idle_since >= PURGE_CHECK_S:
                        idle_since = time.monotonic()
                        await self._check_not_purged()
                    continue
                idle_since = time.monotonic()
                batch: list[RawMessage] = []
                for m in msgs:
                    meta = m.metadata.sequence
                    assert meta is not None
                    if meta.consumer != consumer_seq + 1:
                        # a gap in delivery (lost in flight): apply what is contiguous, then
                        # start a fresh consumer after it
                        await self._apply(batch)
                        raise RuntimeError(
                            f"delivery gap: consumer seq {meta.consumer} after {consumer_seq}"
                        )
                    expected = (batch[-1].seq if batch else self.applied_seq) + 1
                    if meta.stream > expected:
                        # the run stream's sequences are contiguous but for retention's purges:
                        # the events before this one were archived after this consumer began
                        await self._apply(batch)
                        raise Purged(f"stream seq {meta.stream} after {expected - 1}")
                    consumer_seq = meta.consumer
                    batch.append(RawMessage(seq=meta.stream, subject=m.subject, data=m.data))
                await self._apply(batch)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closing
                pass

    async def _check_not_purged(self) -> None:
        """While idle: another tracker may have archived and purged events this replica has
        not read yet (a consumer that starts below the stream's first sequence delivers from
        it, silently); then they are in the archive, which the loop reads again."""
        first = await self._bus.stream_first_seq()
        if first > self.applied_seq + 1:
            raise Purged(f"the stream starts at seq {first}, after seq {self.applied_seq}")

    async def _fetch(self, sub: Any) -> list[Any]:
        """The next batch, as soon as there is one message. nats-py's fetch(n) waits for n
        messages or its whole timeout once nothing was waiting, so a lone live event sat up to
        `batch_wait_s` before it was applied: wait for one, then take (no-wait) whatever else
        is already there, up to the batch size."""
        msgs: list[Any] = await sub.fetch(1, timeout=self._batch_wait_s)
        if self._batch_size > 1:
            with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                msgs += await sub.fetch(self._batch_size - 1, timeout=DRAIN_S)
        return msgs

    async def _apply(self, batch: list[RawMessage]) -> None:
        if not batch:
            return
        before = self.applied_seq
        self.applied_seq = await self._db.call(self._db.store.apply, batch)
        if self._metrics is not None:
            self._metrics.applied(sum(1 for m in batch if before < m.seq <= self.applied_seq))
        self._notify({run_of_subject(m.subject) for m in batch})

    async def lag(self) -> float:
        """The run stream's last sequence minus the last one applied here."""
        return float(max(0, await self._bus.stream_last_seq() - self.applied_seq))
