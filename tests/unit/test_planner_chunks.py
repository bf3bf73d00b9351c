"""Chunk planning: a pure function, checked by tables and by properties."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.common import codec
from sluiceway.common.bus import MAX_EVENT_BYTES
from sluiceway.common.config import MAX_SPEC_BYTES
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.events import ChunkRange
from sluiceway.common.sources.base import Introspection
from sluiceway.planner.domain.chunks import (
    DATE,
    MAX_CHUNKS,
    MAX_DAY_CHUNKS,
    TIMESTAMP,
    TIMESTAMPTZ,
    PlanError,
    empty_range,
    plan_chunks,
    plan_page_chunks,
    temporal_kind,
)
from sluiceway.planner.domain.plan import build_plan, tasks_for


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


# ---- chunk_by_days: ranges of at most N days on a date/time key, aligned to midnight UTC ------

DAY = timedelta(days=1)
KINDS = (DATE, TIMESTAMP, TIMESTAMPTZ)


def _d(i: int, start: str, end: str) -> ChunkRange:
    return ChunkRange(index=i, start_key=start, end_key=end)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"key_low": "2026-01-01", "key_high": "2026-01-05", "key_kind": DATE},
            (
                _d(0, "2026-01-01", "2026-01-03"),
                _d(1, "2026-01-03", "2026-01-05"),
                _d(2, "2026-01-05", "2026-01-06"),
            ),
            id="dates-last-range-clipped",
        ),
        pytest.param(
            {
                "key_low": "2026-01-01T13:45:00+02:00",
                "key_high": "2026-01-02T23:59:59.999999+00:00",
                "key_kind": TIMESTAMPTZ,
            },
            (_d(0, "2026-01-01T00:00:00+00:00", "2026-01-03T00:00:00+00:00"),),
            id="timestamptz-offsets-go-to-utc",
        ),
        pytest.param(
            {
                "key_low": "2025-12-31T23:30:00-01:00",
                "key_high": "2026-01-01T00:10:00+00:00",
                "key_kind": TIMESTAMPTZ,
            },
            (_d(0, "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"),),
            id="a-negative-offset-crosses-midnight",
        ),
        pytest.param(
            {
                "key_low": "2026-03-01 06:00:00",
                "key_high": "2026-03-04 00:00:00",
                "key_kind": TIMESTAMP,
            },
            (
                _d(0, "2026-03-01T00:00:00", "2026-03-03T00:00:00"),
                _d(1, "2026-03-03T00:00:00", "2026-03-05T00:00:00"),
            ),
            id="naive-timestamps-are-utc",
        ),
        pytest.param(
            {"key_kind": DATE, "null_keys": True},
            (ChunkRange(index=0, null_keys=True),),
            id="only-null-keys",
        ),
        pytest.param(
            {"key_kind": TIMESTAMPTZ},
            (_d(0, "1970-01-01T00:00:00+00:00", "1970-01-01T00:00:00+00:00"),),
            id="empty-table-selects-nothing",
        ),
    ],
)
def test_plan_chunks_by_days_table(
    kwargs: dict[str, object], expected: tuple[ChunkRange, ...]
) -> None:
    assert plan_chunks("chunked", chunk_by_days=2, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_low": "1", "key_high": "9", "key_kind": ""}, "date or timestamp key"),
        ({"key_low": "soon", "key_high": "later", "key_kind": DATE}, "not an ISO date"),
        ({"key_low": "infinity", "key_high": "2026-01-01", "key_kind": TIMESTAMPTZ}, "not an ISO"),
        ({"key_low": "2026-02-01", "key_high": "2026-01-01", "key_kind": DATE}, "reversed"),
        ({"key_low": "2000-01-01", "key_high": "2040-01-01", "key_kind": DATE}, "at most"),
        ({"key_low": "9999-12-30", "key_high": "9999-12-31", "key_kind": DATE}, "last"),
        (
            {"key_low": "2026-01-01", "key_high": "2026-01-01", "key_kind": DATE, "chunk_size": 5},
            "exactly one",
        ),
    ],
)
def test_plan_chunks_by_days_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_chunks("chunked", chunk_by_days=1, **kwargs)  # type: ignore[arg-type]


def _instant(text: str) -> datetime:
    """A key bound or range key as a naive UTC datetime."""
    value = datetime.fromisoformat(text)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _as_kind(value: datetime, kind: str) -> str:
    if kind == DATE:
        return value.date().isoformat()
    if kind == TIMESTAMPTZ:
        # the same instant written in a random-looking offset: the planner must go to UTC
        return (
            value.replace(tzinfo=UTC)
            .astimezone(timezone(timedelta(hours=5, minutes=30)))
            .isoformat()
        )
    return value.isoformat(sep=" ")


instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1))


@given(
    low=instants,
    width=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=4000)),
    days=st.integers(1, 400),
    kind=st.sampled_from(KINDS),
    nulls=st.booleans(),
)
def test_chunks_by_days_cover_min_to_max_without_gaps_or_overlaps(
    low: datetime, width: timedelta, days: int, kind: str, nulls: bool
) -> None:
    high = low + width
    lo, hi = _as_kind(low, kind), _as_kind(high, kind)
    chunks = plan_chunks(
        "chunked", key_low=lo, key_high=hi, chunk_by_days=days, key_kind=kind, null_keys=nulls
    )
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.null_keys for c in chunks].count(True) == int(nulls) and chunks[-1].null_keys is nulls
    keyed = [c for c in chunks if not c.null_keys]
    starts = [_instant(c.start_key) for c in keyed]
    ends = [_instant(c.end_key) for c in keyed]
    for c in keyed:  # the key text is of the column's kind, so the source can type it
        assert not c.end_inclusive
        assert (len(c.start_key), len(c.end_key)) == {
            DATE: (10, 10),
            TIMESTAMP: (19, 19),
            TIMESTAMPTZ: (25, 25),
        }[kind]
    for s, e in zip(starts, ends, strict=True):
        assert s.time() == e.time() == datetime.min.time()  # aligned to midnight UTC
        assert timedelta(0) < e - s <= timedelta(days=days)  # never empty, at most N days
    assert all(a == b for a, b in zip(ends, starts[1:], strict=False))  # no gap, no overlap
    # [min, max] is covered: the first range holds min, the last holds max
    assert starts[0] <= _instant(lo) < ends[0]
    assert starts[-1] <= _instant(hi) < ends[-1]
    assert ends[-1] - _instant(hi) <= DAY and _instant(lo) - starts[0] < DAY
    assert len(keyed) == -(-((_instant(hi).date() - _instant(lo).date()).days + 1) // days)


@given(
    points=st.lists(
        st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1)),
        min_size=1,
        max_size=40,
    ),
    days=st.integers(1, 30),
)
def test_every_key_falls_in_exactly_one_day_range(points: list[datetime], days: int) -> None:
    lo, hi = min(points), max(points)
    chunks = plan_chunks(
        "chunked",
        key_low=lo.isoformat(),
        key_high=hi.isoformat(),
        chunk_by_days=days,
        key_kind=TIMESTAMP,
    )
    for p in points:
        holders = [c for c in chunks if _instant(c.start_key) <= p < _instant(c.end_key)]
        assert len(holders) == 1


def test_a_plan_of_the_most_day_chunks_fits_in_one_event() -> None:
    start = datetime(2000, 1, 1, tzinfo=UTC)
    chunks = tuple(
        ChunkRange(i, (start + i * DAY).isoformat(), (start + (i + 1) * DAY).isoformat())
        for i in range(MAX_DAY_CHUNKS)
    )
    plan = ev.PlanResolved(plan_id="p" * 32, strategy="chunked", chunks=chunks)
    event = ev.RunEvent(
        event_id="r/plan_resolved",
        run_id="r",
        export_name="e" * 128,
        occurred_at=datetime(2026, 11, 22, tzinfo=UTC),
        body=plan,
    )
    assert len(codec.encode(event)) + 2 * MAX_SPEC_BYTES < MAX_EVENT_BYTES


def test_temporal_kind_reads_arrow_types() -> None:
    assert temporal_kind("date32[day]") == DATE
    assert temporal_kind("timestamp[us]") == TIMESTAMP
    assert temporal_kind("timestamp[us, tz=UTC]") == TIMESTAMPTZ
    assert temporal_kind("int64") is None and temporal_kind("string") is None


# ---- the `table:` shortcut: the chunk column is the single-column integer primary key ---------


def _spec(**kw: object) -> ev.ExportSpec:
    base: dict[str, object] = dict(
        name="orders",
        source=ev.SourceSpec(engine="sqlite", path="/x.db"),
        table="orders",
        mode="chunked",
        chunk_size=10,
        format="parquet",
        destination="/out",
    )
    return ev.ExportSpec(**(base | kw))  # type: ignore[arg-type]


SCHEMA = (ev.SchemaField("id", "int64", False), ev.SchemaField("sku", "string", False))


def test_a_table_without_chunk_column_is_chunked_on_its_integer_primary_key() -> None:
    intro = Introspection(
        schema=SCHEMA,
        row_estimate=25,
        key_low="1",
        key_high="25",
        key_type="int64",
        primary_key=(SCHEMA[0],),
    )
    plan, _ = build_plan(_spec(), intro)
    assert plan.chunk_column == "id" and len(plan.chunks) == 3
    (task, *_) = tasks_for("r1", _spec(), plan)
    assert task.spec.chunk_column == "id"  # workers read the resolved key


@pytest.mark.parametrize(
    ("pk", "found"),
    [
        ((), "has no primary key"),
        (SCHEMA, "composite primary key (id, sku)"),
        ((SCHEMA[1],), "primary key 'sku' of type string"),
    ],
)
def test_a_table_without_a_usable_primary_key_needs_chunk_column(
    pk: tuple[ev.SchemaField, ...], found: str
) -> None:
    intro = Introspection(schema=SCHEMA, row_estimate=25, primary_key=pk)
    with pytest.raises(PlanError) as err:
        build_plan(_spec(), intro)
    message = str(err.value)
    assert "export 'orders'" in message and found in message and "set chunk_column" in message


def test_chunk_by_days_on_an_integer_column_is_a_planning_error() -> None:
    intro = Introspection(
        schema=SCHEMA, row_estimate=25, key_low="1", key_high="2", key_type="int64"
    )
    with pytest.raises(
        PlanError, match="chunk_by_days needs a date or timestamp chunk_column: 'id'"
    ):
        build_plan(_spec(chunk_size=0, chunk_by_days=7, chunk_column="id"), intro)


# ---- chunk_by pages: heap block ranges ---------------------------------------------------------


def _blocks(ranges: tuple[ChunkRange, ...], pages: int) -> list[int]:
    """The blocks [0, pages) each range covers, in order (the open last one up to `pages`)."""
    out: list[int] = []
    for r in ranges:
        out.extend(range(int(r.start_key), int(r.end_key) if r.end_key else pages))
    return out


@given(pages=st.integers(0, 200_000), mb=st.integers(1, 4096))
def test_page_ranges_by_size_cover_every_block_once_and_leave_the_end_open(
    pages: int, mb: int
) -> None:
    ranges = plan_page_chunks(pages, block_size=8192, chunk_mb=mb)
    assert _blocks(ranges, pages) == list(range(pages))
    assert [r.index for r in ranges] == list(range(len(ranges)))
    assert ranges[-1].end_key == "" and all(r.end_key for r in ranges[:-1])
    per = mb * 2**20 // 8192
    assert all(int(r.end_key) - int(r.start_key) == per for r in ranges[:-1])
    assert len(ranges) == max(1, -(-pages // per))


@given(pages=st.integers(0, 10**6), count=st.integers(1, 500))
def test_page_ranges_by_count_are_near_equal_and_never_empty(pages: int, count: int) -> None:
    ranges = plan_page_chunks(pages, block_size=8192, chunk_count=count)
    assert _blocks(ranges, pages) == list(range(pages))
    assert len(ranges) == max(1, min(count, pages))
    sizes = [len(range(int(r.start_key), int(r.end_key) if r.end_key else pages)) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert pages == 0 or min(sizes) >= 1


def test_an_empty_heap_is_one_open_range_and_too_many_ranges_is_a_plan_error() -> None:
    assert plan_page_chunks(0, block_size=8192, chunk_mb=64) == (
        ChunkRange(index=0, start_key="0", end_key=""),
    )
    with pytest.raises(PlanError, match="use a larger chunk_mb"):
        plan_page_chunks(MAX_CHUNKS * 200, block_size=8192, chunk_mb=1)
    with pytest.raises(PlanError, match="size is unknown"):
        plan_page_chunks(-1, block_size=8192, chunk_mb=1)


def test_a_page_plan_names_its_ranges_and_the_tasks_read_them() -> None:
    spec = ev.ExportSpec(
        name="p",
        source=ev.SourceSpec(engine="postgres", url_env="U"),
        table="public.t",
        mode="chunked",
        chunk_by=ev.CHUNK_BY_PAGES,
        chunk_count=4,
        consistent_snapshot=True,
    )
    intro = Introspection(
        schema=(ev.SchemaField("a", "string"),), row_estimate=10, pages=100, block_size=8192
    )
    plan, warnings = build_plan(spec, intro)
    assert warnings == [] and plan.chunk_by == ev.CHUNK_BY_PAGES and plan.chunk_column == ""
    assert (plan.key_low, plan.key_high) == ("0", "100")
    assert [(c.start_key, c.end_key) for c in plan.chunks] == [
        ("0", "25"),
        ("25", "50"),
        ("50", "75"),
        ("75", ""),
    ]
    tasks = tasks_for("run-1", spec, plan)
    assert [t.range for t in tasks] == list(plan.chunks)
    assert all(ev.reads_ranges(t.spec) for t in tasks)
    # the block count is part of the plan: a table that grew plans differently
    grown, _ = build_plan(spec, dataclasses.replace(intro, pages=101))
    assert grown.plan_id != plan.plan_id
