"""Chunk ranges: a pure function of the mode, the key bounds and the sizing."""

from __future__ import annotations

from sluiceway.common.domain.events import ChunkRange

# More chunks than this is a plan nobody wants (and ChunkTasks would flood the queue).
MAX_CHUNKS = 20_000  # a PlanResolved of this many ranges stays well inside one event (1 MiB)


class PlanError(ValueError):
    """The export cannot be planned as configured (a permanent failure: the run fails)."""


def empty_range(index: int = 0) -> ChunkRange:
    """A range that selects nothing ([0, 0)): an empty table still gets one chunk, so a plan is
    never empty and a run always commits a manifest (with zero parts)."""
    return ChunkRange(index=index, start_key="0", end_key="0", end_inclusive=False)


def plan_chunks(
    mode: str,
    *,
    key_low: str | None = None,
    key_high: str | None = None,
    chunk_size: int = 0,
    chunk_count: int = 0,
    null_keys: bool = False,
) -> tuple[ChunkRange, ...]:
    """The chunks of one export. `full`: one unbounded chunk. `chunked`: contiguous integer
    ranges covering [key_low, key_high] exactly (start inclusive, end exclusive, the last one
    end-inclusive), by `chunk_size` or into `chunk_count` near-equal ranges, plus one
    `null_keys` chunk when some rows have a NULL key. Never returns an empty plan."""
    if mode == "full":
        return (ChunkRange(index=0),)
    if mode != "chunked":
        raise PlanError(f"unknown mode {mode!r}")
    if (chunk_size > 0) == (chunk_count > 0):
        raise PlanError("chunked mode needs exactly one of chunk_size or chunk_count")
    ranges: list[ChunkRange] = []
    if key_low is not None and key_high is not None:
        low, high = _int_key(key_low), _int_key(key_high)
        if low > high:
            raise PlanError(f"key bounds are reversed: low {low} > high {high}")
        ranges = _integer_ranges(low, high, chunk_size, chunk_count)
    if null_keys:
        ranges.append(ChunkRange(index=len(ranges), null_keys=True))
    if not ranges:
        ranges.append(empty_range(0))
    return tuple(ranges)


def _int_key(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PlanError(
            f"chunk key bound {text[:40]!r} is not an integer: chunked mode needs an integer "
            "chunk_column"
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
