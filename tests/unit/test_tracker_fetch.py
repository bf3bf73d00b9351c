"""The projection's fetch: one message is enough to start a batch; the rest is what is stored."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from sluiceway.tracker.app import DRAIN_S, Projection


class FakeSub:
    """Answers fetch(n, timeout) from a script, recording the calls."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, float]] = []

    async def fetch(self, n: int, timeout: float) -> list[str]:
        self.calls.append((n, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)[:n]


def projection(batch_size: int = 1000) -> Projection:
    return Projection(bus=None, db=None, batch_size=batch_size, batch_wait_s=0.2)  # type: ignore[arg-type]


def test_a_lone_message_is_a_batch_without_waiting_for_more() -> None:
    sub = FakeSub([["m1"], nats.errors.TimeoutError()])
    assert asyncio.run(projection()._fetch(sub)) == ["m1"]
    # waits for one up to the batch window, then only collects what is already stored
    assert sub.calls == [(1, 0.2), (999, DRAIN_S)]


def test_what_is_stored_joins_the_first_message_in_order() -> None:
    sub = FakeSub([["m1"], ["m2", "m3"]])
    assert asyncio.run(projection()._fetch(sub)) == ["m1", "m2", "m3"]


def test_nothing_stored_is_a_timeout_for_the_loop_to_retry() -> None:
    sub = FakeSub([nats.errors.TimeoutError()])
    with pytest.raises(nats.errors.TimeoutError):
        asyncio.run(projection()._fetch(sub))
    assert sub.calls == [(1, 0.2)]


def test_a_batch_size_of_one_fetches_once() -> None:
    sub = FakeSub([["m1"]])
    assert asyncio.run(projection(batch_size=1)._fetch(sub)) == ["m1"]
    assert sub.calls == [(1, 0.2)]


def test_a_batch_wakes_the_watchers_of_its_runs_only() -> None:
    import gc

    p = projection()
    mine, other = p.run_marker("r1"), p.run_marker("r2")
    assert p.run_marker("r1") is mine  # watchers of one run share its marker
    everyone = p.progress_marker()
    p._notify({"r1"})
    assert mine.is_set() and not other.is_set() and everyone.is_set()
    assert p.run_marker("r1") is not mine  # the next batch of r1 has a marker of its own
    del other
    gc.collect()
    assert "r2" not in p._run_markers  # nobody waits for r2 any more: nothing is kept
