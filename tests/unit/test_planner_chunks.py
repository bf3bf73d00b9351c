"""Chunk planning: a pure function, checked by tables and by properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.common import codec
from sluiceway.common.bus import MAX_EVENT_BYTES
from sluiceway.common.config import MAX_SPEC_BYTES
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.events import ChunkRange
from sluiceway.planner.domain.chunks import MAX_CHUNKS, PlanError, empty_range, plan_chunks


def _r(i: int, start: int, end: int, inclusive: bool = False) -> ChunkRange:
    return ChunkRange(index=i, start_key=str(start), end_key=str(end), end_inclusive=inclusive)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"mode": "full", "key_low": "1", "key_high": "9"}, (ChunkRange(index=0),), id="full"
        ),
        pytest.param(
            {"mode": "chunked", "key_low": "1", "key_high": "10", "chunk_size": 4},
            (_r(0, 1, 5), _r(1, 5, 9), _r(2, 9, 10, True)),
            id="by-size-last-partial",
        ),
        pytest.param(
            {"mode": "chunked", "key_low": "1", "key_high": "8", "chunk_size": 4},
            (_r(0, 1, 5), _r(1, 5, 8, True)),
            id="by-size-exact",
        ),
        pytest.param(
            {"mode": "chunked", "key_low": "0", "key_high": "9", "chunk_count": 3},
            (_r(0, 0, 3), _r(1, 3, 6), _r(2, 6, 9, True)),
            id="by-count",
        ),
        pytest.param(
            {"mode": "chunked", "key_low": "5", "key_high": "5", "chunk_count": 4},
            (_r(0, 5, 5, True),),
            id="one-key-many-chunks-asked",
        ),
        pytest.param(
            {"mode": "chunked", "key_low": "-3", "key_high": "2", "chunk_size": 3},
            (_r(0, -3, 0), _r(1, 0, 2, True)),
            id="negative-keys",
        ),
        pytest.param(
            {
                "mode": "chunked",
                "key_low": "1",
                "key_high": "4",
                "chunk_size": 2,
                "null_keys": True,
            },
            (_r(0, 1, 3), _r(1, 3, 4, True), ChunkRange(index=2, null_keys=True)),
            id="null-keys-chunk",
        ),
        pytest.param(
            {"mode": "chunked", "chunk_size": 10},
            (empty_range(0),),
            id="empty-table",
        ),
        pytest.param(
            {"mode": "chunked", "chunk_size": 10, "null_keys": True},
            (ChunkRange(index=0, null_keys=True),),
            id="only-null-keys",
        ),
    ],
)
def test_plan_chunks_table(kwargs: dict[str, object], expected: tuple[ChunkRange, ...]) -> None:
    assert plan_chunks(**kwargs) == expected  # type: ignore[arg-type]


def test_an_empty_table_plan_selects_nothing() -> None:
    (only,) = plan_chunks("chunked", chunk_count=3)
    assert only.start_key == only.end_key and not only.end_inclusive and not only.null_keys


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "chunked", "key_low": "a", "key_high": "z", "chunk_size": 1}, "not an integer"),
        ({"mode": "chunked", "key_low": "9", "key_high": "1", "chunk_size": 1}, "reversed"),
        ({"mode": "chunked", "key_low": "1", "key_high": "9"}, "exactly one"),
        ({"mode": "chunked", "chunk_size": 1, "chunk_count": 2}, "exactly one"),
        ({"mode": "sideways"}, "unknown mode"),
        (
            {"mode": "chunked", "key_low": "0", "key_high": str(MAX_CHUNKS * 2), "chunk_size": 1},
            "at most",
        ),
    ],
)
def test_plan_chunks_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_chunks(**kwargs)  # type: ignore[arg-type]


def _check_cover(chunks: tuple[ChunkRange, ...], low: int, high: int) -> None:
    keyed = [c for c in chunks if not c.null_keys]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert int(keyed[0].start_key) == low
    for a, b in itertools.pairwise(keyed):
        assert a.end_key == b.start_key and not a.end_inclusive  # contiguous, no overlap
        assert int(a.start_key) < int(a.end_key)  # never an empty range
    last = keyed[-1]
    assert last.end_inclusive and int(last.end_key) == high
    assert int(last.start_key) <= high


keys = st.integers(min_value=-(10**12), max_value=10**12)


@given(low=keys, width=st.integers(0, 5_000), size=st.integers(1, 700), nulls=st.booleans())
def test_chunks_by_size_cover_the_key_span_exactly(
    low: int, width: int, size: int, nulls: bool
) -> None:
    high = low + width
    chunks = plan_chunks(
        "chunked", key_low=str(low), key_high=str(high), chunk_size=size, null_keys=nulls
    )
    _check_cover(chunks, low, high)
    keyed = [c for c in chunks if not c.null_keys]
    assert len(keyed) == -(-(width + 1) // size)
    for c in keyed[:-1]:
        assert int(c.end_key) - int(c.start_key) == size
    assert int(keyed[-1].end_key) - int(keyed[-1].start_key) + 1 <= size
    assert [c.null_keys for c in chunks].count(True) == int(nulls)
    assert chunks[-1].null_keys is nulls


@given(low=keys, width=st.integers(0, 10**9), count=st.integers(1, 300))
def test_chunks_by_count_cover_the_key_span_exactly(low: int, width: int, count: int) -> None:
    high = low + width
    chunks = plan_chunks("chunked", key_low=str(low), key_high=str(high), chunk_count=count)
    _check_cover(chunks, low, high)
    assert len(chunks) == min(count, width + 1)
    sizes = [int(c.end_key) - int(c.start_key) + int(c.end_inclusive) for c in chunks]
    assert sum(sizes) == width + 1
    assert max(sizes) - min(sizes) <= 1


@given(
    mode=st.sampled_from(["full", "chunked"]),
    bounds=st.one_of(st.none(), st.tuples(keys, st.integers(0, 1000))),
    nulls=st.booleans(),
    size=st.integers(1, 50),
)
def test_a_plan_is_never_empty(
    mode: str, bounds: tuple[int, int] | None, nulls: bool, size: int
) -> None:
    low, high = (None, None) if bounds is None else (str(bounds[0]), str(bounds[0] + bounds[1]))
    chunks = plan_chunks(mode, key_low=low, key_high=high, chunk_size=size, null_keys=nulls)
    assert len(chunks) >= 1


def test_a_plan_of_the_most_chunks_fits_in_one_event() -> None:
    # PlanResolved lists every range (and carries the spec, at most MAX_SPEC_BYTES, and the
    # schema); the run stream takes events up to MAX_EVENT_BYTES
    top = 10**15
    chunks = tuple(
        ChunkRange(i, str(top + i * 1000), str(top + (i + 1) * 1000)) for i in range(MAX_CHUNKS)
    )
    plan = ev.PlanResolved(plan_id="p" * 32, strategy="range", chunks=chunks)
    event = ev.RunEvent(
        event_id="r/plan_resolved",
        run_id="r",
        export_name="e" * 128,
        occurred_at=datetime(2026, 11, 22, tzinfo=UTC),
        body=plan,
    )
    assert len(codec.encode(event)) + 2 * MAX_SPEC_BYTES < MAX_EVENT_BYTES
