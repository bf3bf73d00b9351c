"""The scheduler decides only on the whole feed: a feed behind the stream fails the check."""

from __future__ import annotations

import asyncio

import pytest

from sluiceway.common.domain import events as ev
from sluiceway.planner.scheduler import FeedBehind, Scheduler


class BehindFeed:
    """Facts are pending on the stream, but none arrives (a slow or busy server)."""

    caught_up = False
    position = 0

    def resume_after(self, seq: int) -> None:
        raise AssertionError("there is no snapshot to resume from")

    async def poll(self) -> list[ev.RunEvent]:
        self.caught_up = False
        return []

    async def close(self) -> None:
        pass


class NoSnapshot:
    """A run log with no snapshot of the open runs yet: start-up reads the feed."""

    async def scheduler_snapshot(self) -> None:
        return None


def test_a_feed_that_is_behind_and_brings_nothing_fails_the_check_instead_of_deciding() -> None:
    s = Scheduler(NoSnapshot(), None, BehindFeed(), producer=ev.Producer("scheduler", "t"))  # type: ignore[arg-type]
    with pytest.raises(FeedBehind):
        asyncio.run(s.holding_run("orders"))  # not '' (no run in flight): it does not know
    with pytest.raises(FeedBehind):
        asyncio.run(s.tick())  # run() logs it and ticks again
