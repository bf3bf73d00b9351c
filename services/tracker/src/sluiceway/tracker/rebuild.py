"""Rebuild the tracker's DuckDB read model from the start of the log (the archive, then the run
stream) into a new file, then swap it in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import duckdb
from nats.js.errors import NotFoundError

from sluiceway.common import bus as busmod
from sluiceway.common.parts import fsync_dir
from sluiceway.common.settings import Settings
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.app import Db, Projection
from sluiceway.tracker.archive import Archive

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
STALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


class RebuildError(RuntimeError):
    """The rebuild could not run or finish; the message is one line for the operator."""


class DatabaseInUse(RebuildError):
    """Another process holds the DuckDB file open (DuckDB's file lock)."""


@dataclass(frozen=True)
class Progress:
    path: Path
    applied: int  # stream messages applied to the new file so far
    total: int  # messages in the stream when the rebuild started
    seq: int  # the stream seq applied through
    last_seq: int  # the stream's last seq when the rebuild started
    elapsed_s: float

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.applied / self.total)

    @property
    def rate(self) -> float:
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class RebuildResult:
    path: Path
    applied: int
    last_seq: int  # the new file's projection offset
    elapsed_s: float
    runs: int
    anomalies: int

    @property
    def rate(self) -> float:
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


Report = Callable[[Progress], None]


class ProgressPrinter:
    """Progress lines at most every `interval_s`, and one final line with the totals."""

    def __init__(
        self,
        out: TextIO,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def __call__(self, p: Progress) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return
        self._last = now
        self._print(
            f"rebuild {p.path}: {p.applied}/{p.total} events applied "
            f"(seq {p.seq}/{p.last_seq}, {p.percent:.1f}%), {p.rate:.0f} events/s"
        )

    def final(self, r: RebuildResult) -> None:
        self._print(
            f"rebuilt {r.path}: {r.applied} events through seq {r.last_seq} in "
            f"{r.elapsed_s:.1f} s ({r.rate:.0f} events/s), {r.runs} runs, {r.anomalies} anomalies"
        )

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def temp_path(path: Path) -> Path:
    """Beside `path` (same filesystem, so the final rename is atomic)."""
    return path.with_name(path.name + ".rebuild.tmp")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


_PID = re.compile(r"\(PID (\d+)\)")


@contextlib.contextmanager
def _exclusive(path: Path, holder: str) -> Iterator[None]:
    """Hold DuckDB's write lock on `path` (when it exists) for the duration: no tracker can open
    it meanwhile. Raises DatabaseInUse, naming the file, when another process holds it."""
    if not path.exists():
        yield
        return
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        if "could not set lock" not in str(exc).lower():
            # not a DuckDB file we can open (damaged, other version): replaced all the same
            log.warning("%s cannot be opened (%s); it will be replaced", path, exc)
            yield
            return
        pid = _PID.search(str(exc))
        by = f" (PID {pid.group(1)})" if pid else ""
        raise DatabaseInUse(f"{path} is open in another process{by}: {holder}") from None
    except duckdb.Error as exc:
        log.warning("%s cannot be opened (%s); it will be replaced", path, exc)
        yield
        return
    try:
        # fold a WAL left by a killed process into its own file, so that no stale .wal can be
        # replayed against the file that replaces it
        con.execute("CHECKPOINT")
        yield
    finally:
        con.close()


def check_not_in_use(path: str | Path) -> None:
    """Raise DatabaseInUse, naming the file, when another process holds `path` open."""
    with _exclusive(Path(path).absolute(), "stop the tracker that uses it first"):
        pass


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _wal(path).unlink(missing_ok=True)


def _counts(store: TrackerStore) -> tuple[int, int]:
    return len(store.table("runs")), len(store.table("anomalies"))


async def _follow(
    projection: Projection,
    task: asyncio.Task[None],
    progress: Callable[[int], Progress],
    report: Report | None,
    *,
    last_seq: int,
    stall_timeout_s: float,
    clock: Callable[[], float],
) -> None:
    """Wait until the projection has applied `last_seq`, reporting after every wake-up."""
    seen = projection.applied_seq
    moved_at = clock()
    while projection.applied_seq < last_seq:
        marker = projection.progress_marker()  # taken before the check: no batch slips by
        if projection.applied_seq >= last_seq:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(marker.wait(), timeout=1.0)
        if task.done():  # Projection.run only ends by an error it does not retry
            task.result()
            raise RebuildError("the projection stopped before reaching the end of the stream")
        if projection.applied_seq != seen:
            seen, moved_at = projection.applied_seq, clock()
        elif clock() - moved_at > stall_timeout_s:
            raise RebuildError(
                f"no progress for {stall_timeout_s:.0f} s at seq {seen} of {last_seq} "
                "(is NATS reachable?)"
            )
        if report is not None:
            report(progress(projection.applied_seq))


async def rebuild(
    bus: busmod.Bus,
    path: str | Path,
    *,
    report: Report | None = None,
    batch_size: int = BATCH_SIZE,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    archive: Archive | None = None,
) -> RebuildResult:
    """Project the whole run stream into a fresh file beside `path` with the tracker's own
    Projection and TrackerStore, then atomically replace `path` with it. A crash before the
    rename leaves `path` as it was; a leftover temporary file is discarded by the next rebuild.

    Refuses (DatabaseInUse) while another process holds `path` open: a running tracker keeps
    its own offset and would go on from it in a file that is no longer the one on disk."""
    path = Path(path).absolute()
    tmp = temp_path(path)
    check_not_in_use(path)  # refuse before reading anything
    try:
        info = await bus.js.stream_info(bus.names.runs_stream)
    except NotFoundError:
        raise RebuildError(
            f"stream {bus.names.runs_stream} not found (check SLUICEWAY_NAMESPACE and "
            "SLUICEWAY_NATS_URL)"
        ) from None
    first_seq = max(1, info.state.first_seq)
    if archive is not None:  # the archive, then the stream (retention purged what it holds)
        segments = await asyncio.to_thread(archive.segments)
        first_seq = min([first_seq, *(s.first for s in segments)])
    last_seq = info.state.last_seq
    total = max(0, last_seq - first_seq + 1)
    started = clock()

    def progress(seq: int) -> Progress:
        # the log (archive and stream) has no gaps: the messages up to `seq` are
        # first_seq..seq (more than `total` when events were appended during the rebuild)
        applied = max(0, seq - first_seq + 1)
        return Progress(path, applied, total, seq, last_seq, clock() - started)

    with _exclusive(tmp, "another rebuild of this file is running"):
        pass
    _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = await asyncio.to_thread(TrackerStore, tmp)
    db = Db(store)
    replaced = False
    try:
        try:
            projection = Projection(bus, db, batch_size=batch_size, archive=archive)
            await projection.start()
            task = asyncio.create_task(projection.run(), name="tracker-rebuild")
            try:
                await _follow(
                    projection,
                    task,
                    progress,
                    report,
                    last_seq=last_seq,
                    stall_timeout_s=stall_timeout_s,
                    clock=clock,
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            offset = await db.call(store.offset)
            runs, anomalies = await db.call(_counts, store)
        finally:
            await db.close()  # CHECKPOINT: the new file is whole, with no WAL beside it
        final = progress(offset)
        with _exclusive(path, "it was opened during the rebuild; stop that process first"):
            _wal(path).unlink(missing_ok=True)
            os.replace(tmp, path)
            replaced = True
            fsync_dir(path.parent)
    finally:
        if not replaced:
            _remove(tmp)
    return RebuildResult(path, final.applied, offset, final.elapsed_s, runs, anomalies)


def run_rebuild(
    settings: Settings,
    path: str | Path,
    *,
    out: TextIO | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    batch_size: int = BATCH_SIZE,
) -> RebuildResult:
    """Connect to NATS from `settings`, rebuild `path`, print progress and totals to `out`
    (stderr by default). Raises RebuildError with a one-line message."""
    printer = ProgressPrinter(sys.stderr if out is None else out)
    # while NATS is unreachable the client logs a traceback per attempt; the error says it once
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)

    check_not_in_use(path)  # before connecting: the answer does not depend on NATS

    async def main() -> RebuildResult:
        try:
            # bounded here as well: with unlimited reconnects, nats.connect() itself keeps
            # retrying a server that is down, so connect_timeout_s alone never fires
            nc = await asyncio.wait_for(
                busmod.connect(
                    settings.nats_url,
                    name=f"tracker-rebuild-{settings.instance}",
                    connect_timeout_s=connect_timeout_s,
                    options=settings.nats_options(),
                ),
                timeout=connect_timeout_s,
            )
        except (ConnectionError, TimeoutError):
            raise RebuildError(
                f"cannot reach NATS at {settings.nats_url} within {connect_timeout_s:.0f} s"
            ) from None
        try:
            bus = busmod.Bus(nc, settings.names)
            archive = (
                Archive(settings.archive, settings.names.namespace) if settings.archive else None
            )
            return await rebuild(bus, path, report=printer, batch_size=batch_size, archive=archive)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()

    result = asyncio.run(main())
    printer.final(result)
    return result
