"""Prefetch: a source read ahead in a thread of its own, in order, bounded, and closed by that
thread whether the consumer reads to the end, leaves early or the source fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sluiceway.common.phases import PHASES, Phases, timed, timed_batches
from sluiceway.common.prefetch import Prefetch


class Source:
    """A generator source that records which threads advanced and closed it, and how far
    ahead of the consumer it got."""

    def __init__(self, n: int, fail_at: int = -1) -> None:
        self.n = n
        self.fail_at = fail_at
        self.produced = 0
        self.threads: set[str] = set()
        self.closed_in = ""
        self.finished = threading.Event()

    def __iter__(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                if i == self.fail_at:
                    raise ValueError(f"broken at {i}")
                self.produced += 1
                yield i
        finally:
            self.closed_in = threading.current_thread().name
            self.finished.set()


def test_every_item_arrives_in_order_and_the_source_ends_in_the_reader_thread() -> None:
    source = Source(50)
    with Prefetch(iter(source), depth=3, name="reader-x") as ahead:
        assert list(ahead) == list(range(50))
        assert list(ahead) == [], "an ended prefetch stays ended"
    assert source.threads == {"reader-x"}
    assert source.closed_in == "reader-x"


def test_the_reader_is_never_more_than_depth_items_ahead() -> None:
    source = Source(100)
    with Prefetch(iter(source), depth=2) as ahead:
        assert next(ahead) == 0
        time.sleep(0.3)  # the reader runs as far as the queue lets it
        # one taken, two waiting in the queue, one read and waiting to be put
        assert source.produced <= 1 + 2 + 1, source.produced
        assert next(ahead) == 1


def test_leaving_early_stops_the_reader_and_runs_the_source_cleanup_before_close_returns() -> None:
    source = Source(1_000_000)
    ahead = Prefetch(iter(source), depth=2, name="reader-y")
    assert [next(ahead), next(ahead)] == [0, 1]
    ahead.close()
    assert source.finished.is_set(), "close() returned before the source's finally ran"
    assert source.closed_in == "reader-y"
    assert source.produced < 10
    with pytest.raises(StopIteration):
        next(ahead)


def test_an_error_of_the_source_reaches_the_consumer_after_the_items_before_it() -> None:
    source = Source(10, fail_at=4)
    got: list[int] = []
    with Prefetch(iter(source), depth=2) as ahead, pytest.raises(ValueError, match="broken at 4"):
        for item in ahead:
            got.append(item)
    assert got == [0, 1, 2, 3]
    assert source.finished.is_set()


def test_an_error_of_the_consumer_closes_the_source() -> None:
    source = Source(1_000)
    with pytest.raises(RuntimeError, match="writer failed"):
        with Prefetch(iter(source), depth=1) as ahead:
            for item in ahead:
                if item == 3:
                    raise RuntimeError("writer failed")
    assert source.finished.is_set()
    assert source.produced < 10


def test_an_empty_source_ends_at_once() -> None:
    with Prefetch(iter(Source(0))) as ahead:
        assert list(ahead) == []


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        Prefetch(iter([1]), depth=0)


# ---- phases ------------------------------------------------------------------------------------


def test_phases_add_up_per_name_and_refuse_an_unknown_one() -> None:
    phases = Phases()
    phases.add("count", 0.25)
    phases.add("count", 0.5)
    with timed(phases, "encode"):
        time.sleep(0.02)
    seconds = phases.seconds()
    assert set(seconds) == set(PHASES)
    assert seconds["count"] == 0.75
    assert 0.015 <= seconds["encode"] < 1.0
    with pytest.raises(ValueError, match="unknown phase 'parse'"):
        phases.add("parse", 1.0)
    with timed(None, "parse"):  # no phases: nothing is recorded, nothing is checked
        pass


def test_timed_batches_charges_the_first_wait_to_first_byte_and_the_rest_to_read() -> None:
    def slow() -> Iterator[int]:
        time.sleep(0.05)
        yield 1
        time.sleep(0.02)
        yield 2

    phases = Phases()
    assert list(timed_batches(slow(), phases)) == [1, 2]
    seconds = phases.seconds()
    assert seconds["first_byte"] >= 0.045
    assert 0.015 <= seconds["read"] < seconds["first_byte"]
    assert list(timed_batches(iter([3]), None)) == [3]
