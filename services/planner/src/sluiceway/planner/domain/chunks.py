"""Chunk ranges: a pure function of the mode, the key bounds and the sizing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from sluiceway.common.domain.events import ChunkRange

# More chunks than this is a plan nobody wants (and ChunkTasks would flood the queue).
MAX_CHUNKS = 20_000  # a PlanResolved of this many ranges stays well inside one event (1 MiB)


class PlanError(ValueError):
    """The export cannot be planned as configured (a permanent failure: the run fails)."""


def empty_range(index: int = 0) -> ChunkRange:
    """A range that selects nothing ([0, 0)): an empty table still gets one chunk, so a plan is
    never empty and a run always commits a manifest (with zero parts)."""
    return ChunkRange(index=index, start_key="0", end_key="0", end_inclusive=False)


# chunk_by keys: the bounds' JSON text, all of it, stays well inside one PlanResolved
MAX_KEY_BOUNDS_CHARS = 256 * 1024

# ISO timestamp keys are longer than integer ones: fewer of them fit in one PlanResolved
MAX_DAY_CHUNKS = 10_000  # 27 years of daily chunks

# the key kinds chunk_by_days plans over, and how their range bounds are written
DATE, TIMESTAMP, TIMESTAMPTZ = "date", "timestamp", "timestamptz"
_EPOCH = date(1970, 1, 1)


def temporal_kind(key_type: str) -> str | None:
    """The kind of a date/time chunk key from its Arrow type string; None for any other type."""
    t = key_type.replace(" ", "")
    if t.startswith(("date32", "date64")):
        return DATE
    if t.startswith("timestamp["):
        return TIMESTAMPTZ if ",tz=" in t else TIMESTAMP
    return None


def is_integer_type(key_type: str) -> bool:
    return key_type.strip() in {
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    }


# modes read as one chunk: every row, the rows after the committed cursor, the rows of a window
ROW_MODES = ("full", "incremental", "time_window")


def plan_chunks(
    mode: str,
    *,
    key_low: str | None = None,
    key_high: str | None = None,
    chunk_size: int = 0,
    chunk_count: int = 0,
    chunk_by_days: int = 0,
    key_kind: str = "",
    null_keys: bool = False,
) -> tuple[ChunkRange, ...]:
    """The chunks of one export. `full`: one unbounded chunk. `chunked`: contiguous integer
    ranges covering [key_low, key_high] exactly (start inclusive, end exclusive, the last one
    end-inclusive), by `chunk_size` or into `chunk_count` near-equal ranges; or, with
    `chunk_by_days` over a date/time key of `key_kind`, ranges of at most that many days,
    aligned to midnight UTC, from the day of key_low to the day after key_high (every range
    end-exclusive). Plus one `null_keys` chunk when some rows have a NULL key. Never returns an
    empty plan."""
    if mode in ROW_MODES:  # the run's rows (all, after a cursor, in a window) as one chunk
        return (ChunkRange(index=0),)
    if mode != "chunked":
        raise PlanError(f"unknown mode {mode!r}")
    if sum(1 for n in (chunk_size, chunk_count, chunk_by_days) if n > 0) != 1:
        raise PlanError(
            "chunked mode needs exactly one of chunk_size, chunk_count or chunk_by_days"
        )
    if chunk_by_days > 0 and key_kind not in (DATE, TIMESTAMP, TIMESTAMPTZ):
        raise PlanError(
            f"chunk_by_days needs a date or timestamp key, not {key_kind or 'unknown'!r}"
        )
    ranges: list[ChunkRange] = []
    if key_low is not None and key_high is not None:
        if chunk_by_days > 0:
            ranges = _day_ranges(_day(key_low), _day(key_high), chunk_by_days, key_kind)
        else:
            low, high = _int_key(key_low), _int_key(key_high)
            if low > high:
                raise PlanError(f"key bounds are reversed: low {low} > high {high}")
            ranges = _integer_ranges(low, high, chunk_size, chunk_count)
    if null_keys:
        ranges.append(ChunkRange(index=len(ranges), null_keys=True))
    if not ranges:
        if chunk_by_days > 0:
            epoch = day_key(_EPOCH, key_kind)
            ranges.append(ChunkRange(index=0, start_key=epoch, end_key=epoch))
        else:
            ranges.append(empty_range(0))
    return tuple(ranges)


def day_key(day: date, kind: str) -> str:
    """Midnight UTC of `day` written as the key kind's ISO text (what the sources parse)."""
    if kind == DATE:
        return day.isoformat()
    midnight = datetime(day.year, day.month, day.day)
    if kind == TIMESTAMPTZ:
        return midnight.replace(tzinfo=UTC).isoformat()
    return midnight.isoformat()


def _day(text: str) -> date:
    """The UTC day of a key bound given as ISO text (a date, or a timestamp: naive is UTC)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PlanError(
            f"chunk key bound {text[:40]!r} is not an ISO date or timestamp: chunk_by_days "
            "needs a date or timestamp chunk_column"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.date()


def _day_ranges(low: date, high: date, days: int, kind: str) -> list[ChunkRange]:
    if low > high:
        raise PlanError(f"key bounds are reversed: low {low} > high {high}")
    span = (high - low).days + 1
    n = -(-span // days)
    if n > MAX_DAY_CHUNKS:
        raise PlanError(
            f"chunk_by_days {days} over [{low}, {high}] gives {n} chunks "
            f"(at most {MAX_DAY_CHUNKS}): use a larger chunk_by_days"
        )
    try:
        stop = high + timedelta(days=1)
    except OverflowError:
        raise PlanError(f"chunk key bound {high} is the last representable day") from None
    out: list[ChunkRange] = []
    for i in range(n):
        start = low + timedelta(days=i * days)
        end = stop if (stop - start).days <= days else start + timedelta(days=days)
        out.append(ChunkRange(index=i, start_key=day_key(start, kind), end_key=day_key(end, kind)))
    return out


def _int_key(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PlanError(
            f"chunk key bound {text[:40]!r} is not an integer: chunk_size and chunk_count need "
            "an integer chunk_column (chunk_by_days: a date or timestamp one)"
        ) from None


def _integer_ranges(low: int, high: int, chunk_size: int, chunk_count: int) -> list[ChunkRange]:
    span = high - low + 1
    if chunk_size > 0:
        n = -(-span // chunk_size)
        if n > MAX_CHUNKS:
            raise PlanError(
                f"chunk_size {chunk_size} over keys [{low}, {high}] gives {n} chunks "
                f"(at most {MAX_CHUNKS}): use a larger chunk_size"
            )
        bounds = [low + i * chunk_size for i in range(n)] + [high + 1]
    else:
        n = min(chunk_count, span)  # never a range with no key in it
        # near-equal split: sizes differ by at most one
        bounds = [low + (span * i) // n for i in range(n + 1)]
    out: list[ChunkRange] = []
    for i in range(n):
        last = i == n - 1
        out.append(
            ChunkRange(
                index=i,
                start_key=str(bounds[i]),
                end_key=str(high if last else bounds[i + 1]),
                end_inclusive=last,
            )
        )
    return out


def chunk_count_requested_exceeds_keys(
    chunk_count: int, key_low: str | None, key_high: str | None
) -> bool:
    """True when chunk_count asks for more chunks than there are distinct keys."""
    if chunk_count <= 0 or key_low is None or key_high is None:
        return False
    return chunk_count > _int_key(key_high) - _int_key(key_low) + 1


def plan_page_chunks(
    pages: int, *, block_size: int, chunk_mb: int = 0, chunk_count: int = 0
) -> tuple[ChunkRange, ...]:
    """chunk_by pages: the heap's blocks [0, pages) as contiguous ranges [start, end) of block
    numbers, of about `chunk_mb` MB each or `chunk_count` near-equal ones. The last range has no
    end: rows on blocks added after planning are read by it (and, with the run's snapshot,
    only those the snapshot sees). An empty heap is one open range."""
    if pages < 0 or block_size <= 0:
        raise PlanError(f"the table's size is unknown ({pages} blocks of {block_size} bytes)")
    if chunk_mb > 0:
        per = max(1, (chunk_mb << 20) // block_size)
        n = max(1, -(-pages // per))
        if n > MAX_CHUNKS:
            raise PlanError(
                f"chunk_mb {chunk_mb} over {pages} blocks gives {n} chunks "
                f"(at most {MAX_CHUNKS}): use a larger chunk_mb"
            )
        bounds = [i * per for i in range(n)]
    elif chunk_count > 0:
        n = max(1, min(chunk_count, pages))  # never a range with no block in it
        bounds = [(pages * i) // n for i in range(n)]
    else:
        raise PlanError("chunk_by pages needs chunk_mb or chunk_count")
    return tuple(
        ChunkRange(index=i, start_key=str(start), end_key=str(bounds[i + 1]) if i + 1 < n else "")
        for i, start in enumerate(bounds)
    )


def plan_key_chunks(boundaries: Sequence[Sequence[int | str]]) -> tuple[ChunkRange, ...]:
    """chunk_by keys: ranges of key tuples [b_i, b_i+1), JSON arrays, from the key of every
    n-th row in key order (so every chunk holds n rows when planned). The first range has no
    start and the last no end: keys inserted below the first or above the last after planning
    are read too. No boundary (an empty table) is one open range."""
    if len(boundaries) > MAX_CHUNKS:
        raise PlanError(
            f"{len(boundaries)} key ranges (at most {MAX_CHUNKS}): use a larger chunk_size"
        )
    if not boundaries:
        return (ChunkRange(index=0),)
    texts = [json.dumps(list(b), ensure_ascii=False, separators=(",", ":")) for b in boundaries]
    if sum(map(len, texts)) > MAX_KEY_BOUNDS_CHARS:
        raise PlanError(
            f"the {len(texts)} key ranges' bounds take {sum(map(len, texts)):,} characters "
            f"(at most {MAX_KEY_BOUNDS_CHARS:,} fit a plan): use a larger chunk_size"
        )
    return tuple(
        ChunkRange(
            index=i,
            start_key=texts[i] if i else "",
            end_key=texts[i + 1] if i + 1 < len(texts) else "",
        )
        for i in range(len(texts))
    )
