"""Retention of the run stream: archive its oldest whole runs, then purge them from the stream.

The stream keeps every run that is open or ended less than `SLUICEWAY_RUNS_MAX_AGE` ago. Below
the first event of the oldest such run (and of what this tracker has not applied yet), every
message belongs to a run that ended before the window: that prefix is copied, message for
message (seq, subject, stored time, bytes), into Parquet segments under the archive prefix
(`<prefix>/<namespace>/runs/segment-<first>-<last>.parquet`), and only once a segment is
stored is the stream purged below its end. So the log is the archive followed by the stream,
with no gap: a rebuild reads the one, then the other.

A crash between the segment and the purge leaves both; the next pass writes a segment over the
same range again (or a longer one) and purges. Readers take each sequence once, whichever
segment holds it. Several trackers may archive at once: each purges only below a segment it
has stored itself, so a purge never outruns the archive.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.common import crash
from sluiceway.common.bus import Bus, retrying
from sluiceway.common.destination import Destination, open_destination
from sluiceway.common.service import every
from sluiceway.tracker.adapters.projection import RawMessage

log = logging.getLogger(__name__)

# messages per segment: about 15 MB of events before compression, read and written whole
SEGMENT_MESSAGES = 100_000
# under a size bound, archive early (whatever the age of the ended runs) above this share of it
SIZE_PRESSURE = 0.8
SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("subject", pa.string()),
        ("stored_at", pa.timestamp("ns", tz="UTC")),
        ("data", pa.binary()),
    ]
)
_NAME = re.compile(r"^segment-(\d{20})-(\d{20})\.parquet$")


class ArchiveGap(RuntimeError):
    """The stream no longer holds events that this read model lacks, and no archive has them."""


@dataclass(frozen=True)
class Segment:
    first: int
    last: int  # inclusive
    name: str


def segment_name(first: int, last: int) -> str:
    return f"segment-{first:020d}-{last:020d}.parquet"


def ranges(first: int, cut: int, most: int = SEGMENT_MESSAGES) -> list[tuple[int, int]]:
    """[first, cut) as half-open ranges of at most `most` sequences each."""
    return [(a, min(a + most, cut)) for a in range(first, cut, most)]


def cut_below(blocking_seq: int | None, offset: int) -> int:
    """The first sequence to keep: the first event of the oldest run the window keeps, and
    never above what this tracker has applied (it has not seen which runs those belong to)."""
    keep_from = offset + 1
    return keep_from if blocking_seq is None else min(blocking_seq, keep_from)


def chain(segments: list[Segment], after_seq: int) -> list[Segment]:
    """The segments to read, in order, for every sequence after `after_seq` that the archive
    holds: overlapping segments (a crash between a segment and its purge, two trackers) are
    read once each and their common sequences skipped by the reader. Raises ArchiveGap when
    the segments leave a hole."""
    out: list[Segment] = []
    reached = after_seq
    for seg in sorted(segments, key=lambda s: (s.first, -s.last)):
        if seg.last <= reached:
            continue
        if seg.first > reached + 1:
            raise ArchiveGap(
                f"the archive has no events {reached + 1}..{seg.first - 1} "
                f"(next segment {seg.name})"
            )
        out.append(seg)
        reached = seg.last
    return out


class Archive:
    """The segments under one prefix: a local directory or an object-store URL."""

    def __init__(self, url: str, namespace: str, dest: Destination | None = None) -> None:
        self.url = url
        self._dest = dest or open_destination(url)
        self._dir = self._dest.path(namespace, "runs")

    def segments(self) -> list[Segment]:
        out = []
        for name in self._dest.files(self._dir):
            m = _NAME.match(name)
            if m:
                out.append(Segment(int(m.group(1)), int(m.group(2)), name))
        return out

    def last_seq(self) -> int:
        return max((s.last for s in self.segments()), default=0)

    def write(self, messages: list[tuple[int, str, datetime, bytes]]) -> str:
        """Store one segment of consecutive messages (atomically: whole or absent)."""
        columns = zip(*messages, strict=True)
        table = pa.Table.from_arrays(
            [pa.array(col, type=f.type) for col, f in zip(columns, SCHEMA, strict=True)],
            schema=SCHEMA,
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        name = segment_name(messages[0][0], messages[-1][0])
        self._dest.make_dirs(self._dir)
        self._dest.put(self._dest.path(self._dir, name), buf.getvalue())
        return name

    def after(self, after_seq: int) -> list[Segment]:
        """The segments that hold the archived messages after `after_seq`, in order."""
        return chain(self.segments(), after_seq)

    def read(self, segment: Segment, after_seq: int) -> list[RawMessage]:
        """The messages of `segment` after `after_seq`, in stream order."""
        data = self._dest.read_bytes(self._dest.path(self._dir, segment.name))
        if data is None:
            raise ArchiveGap(f"segment {segment.name} disappeared while being read")
        table = pq.read_table(io.BytesIO(data), columns=["seq", "subject", "data"])
        return [
            RawMessage(seq=seq, subject=subject, data=payload)
            for seq, subject, payload in zip(
                table["seq"].to_pylist(),
                table["subject"].to_pylist(),
                table["data"].to_pylist(),
                strict=True,
            )
            if seq > after_seq
        ]


class Archiver:
    """One pass at a time: find the cut, archive below it, purge. Runs in the tracker."""

    def __init__(
        self,
        bus: Bus,
        archive: Archive,
        blocking_seq: Callable[[int, datetime], Awaitable[int | None]],
        offset: Callable[[], int],
        *,
        max_age: timedelta,
        max_bytes: int = -1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._bus = bus
        self.archive = archive
        self._blocking_seq = blocking_seq
        self._offset = offset
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._clock = clock

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        await every(interval_s, stop, self.archive_once, "archiving")

    async def archive_once(self) -> None:
        bus = self._bus
        state = await bus.stream_state()
        first = max(1, state.first_seq)
        now = self._clock()
        ended_before = now - self._max_age
        if self._max_bytes > 0 and state.bytes > SIZE_PRESSURE * self._max_bytes:
            ended_before = now  # near the size bound: every ended run may go
        cut = cut_below(await self._blocking_seq(first, ended_before), self._offset())
        for a, b in ranges(first, cut):
            messages = await bus.stored_range(a, b)
            if [m[0] for m in messages] != list(range(a, b)):
                # another tracker purged meanwhile: what it purged, it had archived first
                log.info("the stream moved during archiving (seq %d..%d); next pass", a, b - 1)
                break
            name = await asyncio.to_thread(self.archive.write, messages)
            crash.point("tracker.after_archive")
            await retrying(
                lambda b=b: bus.js.purge_stream(bus.names.runs_stream, seq=b),  # type: ignore[misc]
                f"purging the run stream below seq {b}",
            )
            log.info("archived seq %d..%d as %s and purged them from the stream", a, b - 1, name)
