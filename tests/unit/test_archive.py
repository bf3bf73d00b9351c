"""Retention's pure parts (which ranges to archive, which segments to read) and the segment
files themselves, on a local directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.tracker.archive import (
    Archive,
    ArchiveGap,
    Segment,
    chain,
    cut_below,
    ranges,
    segment_name,
)


def test_ranges_cover_the_prefix_exactly_in_bounded_pieces() -> None:
    assert ranges(1, 1) == []
    assert ranges(5, 8, most=10) == [(5, 8)]
    assert ranges(1, 26, most=10) == [(1, 11), (11, 21), (21, 26)]


@given(st.integers(1, 10_000), st.integers(0, 10_000), st.integers(1, 500))
def test_ranges_are_contiguous_and_never_longer_than_asked(first: int, n: int, most: int) -> None:
    out = ranges(first, first + n, most)
    covered = [seq for a, b in out for seq in range(a, b)]
    assert covered == list(range(first, first + n))
    assert all(0 < b - a <= most for a, b in out)


def test_the_cut_never_passes_what_the_tracker_has_applied() -> None:
    assert cut_below(None, 100) == 101  # every applied event belongs to an aged-out run
    assert cut_below(40, 100) == 40  # the oldest run the window keeps starts at 40
    assert cut_below(500, 100) == 101  # beyond the offset the runs are not known yet


def _seg(first: int, last: int) -> Segment:
    return Segment(first, last, segment_name(first, last))


def test_chain_skips_what_was_read_and_reads_overlaps_once() -> None:
    segs = [_seg(1, 100), _seg(101, 150), _seg(1, 120), _seg(151, 151)]
    # the longest segment from each start wins; 101..150 is still needed beyond 120
    assert chain(segs, 0) == [_seg(1, 120), _seg(101, 150), _seg(151, 151)]
    assert chain(segs, 130) == [_seg(101, 150), _seg(151, 151)]
    assert chain(segs, 151) == []


def test_a_hole_in_the_archive_is_an_error_naming_it() -> None:
    with pytest.raises(ArchiveGap, match=r"no events 101\.\.109"):
        chain([_seg(1, 100), _seg(110, 120)], 0)
    with pytest.raises(ArchiveGap, match=r"no events 1\.\.9 "):
        chain([_seg(10, 20)], 0)


def test_segments_round_trip_and_overlaps_are_read_once(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path), "ns")
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def messages(a: int, b: int) -> list[tuple[int, str, datetime, bytes]]:
        return [(s, f"ns.runs.r{s % 3}.warning", at, f"m{s}".encode()) for s in range(a, b)]

    assert archive.write(messages(1, 11)) == segment_name(1, 10)
    archive.write(messages(1, 16))  # a crash before the purge, then a longer pass
    archive.write(messages(16, 21))
    (tmp_path / "ns" / "runs" / "not-a-segment.txt").write_text("ignored")
    assert archive.last_seq() == 20
    # read as the projection does: each segment after what is applied so far
    got, reached = [], 0
    for seg in archive.after(0):
        batch = archive.read(seg, reached)
        got += batch
        reached = batch[-1].seq if batch else reached
    assert [m.seq for m in got] == list(range(1, 21))
    assert got[4].subject == "ns.runs.r2.warning" and got[4].data == b"m5"
    assert [m.seq for m in archive.read(archive.after(12)[0], 12)] == [13, 14, 15]
