"""Holds each consistent_snapshot run's exported snapshot open until the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

POLL_S = 1.0
MAX_HOLD_S = 6 * 3600.0


class Hold(Protocol):
    """An open source transaction whose snapshot a run's chunks import
    (sluiceway.common.sources.postgres.SnapshotHold)."""

    snapshot_id: str

    def alive(self) -> bool: ...

    def release(self) -> None: ...


class SnapshotKeeper:
    """One watcher per held snapshot: it asks the log whether the run has ended (one direct
    get of the run's `completed` subject, and of its cancel, each `poll_s`) and releases the
    hold once it has, or once `max_hold_s` have passed, whichever comes first. A hold that
    expires before the run ends makes the chunks not yet read fail with SnapshotLost: the
    maximum bounds how long a forgotten run can hold back the source's VACUUM."""

    def __init__(
        self,
        run_stopped: Callable[[str], Awaitable[str]],
        *,
        poll_s: float = POLL_S,
        max_hold_s: float = MAX_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_stopped = run_stopped
        self._poll_s = poll_s
        self._max_hold_s = max_hold_s
        self._clock = clock
        self._held: dict[str, tuple[Hold, asyncio.Task[None]]] = {}

    def keep(self, run_id: str, hold: Hold) -> None:
        """Hold `hold` for `run_id` from now on (a second hold for the same run replaces and
        releases nothing: the caller never makes one)."""
        task = asyncio.create_task(self._watch(run_id, hold), name=f"snapshot-{run_id}")
        self._held[run_id] = (hold, task)

    def held(self) -> list[str]:
        """The runs whose snapshot is held now."""
        return sorted(self._held)

    async def _watch(self, run_id: str, hold: Hold) -> None:
        began = self._clock()
        why = ""
        try:
            while not why:
                await asyncio.sleep(self._poll_s)
                if self._clock() - began >= self._max_hold_s:
                    why = f"held for the maximum of {self._max_hold_s:.0f} s"
                    log.warning(
                        "releasing snapshot %s %s before the run ended: chunks not yet read "
                        "will fail",
                        hold.snapshot_id,
                        why,
                        extra={"run_id": run_id},
                    )
                    break
                if not hold.alive():
                    why = "its session ended"
                    log.warning(
                        "snapshot %s: its session ended before the run did",
                        hold.snapshot_id,
                        extra={"run_id": run_id},
                    )
                    break
                try:
                    why = await self._run_stopped(run_id)
                except Exception as exc:  # the bus is away: keep holding, ask again
                    log.warning("cannot check whether run %s goes on: %s", run_id, exc)
        finally:
            self._held.pop(run_id, None)
            await asyncio.to_thread(hold.release)
            log.info(
                "snapshot %s released: %s",
                hold.snapshot_id,
                why or "the planner stops",
                extra={"run_id": run_id},
            )

    async def close(self) -> None:
        """Release every hold (the planner stops: the runs still reading will fail)."""
        tasks = [task for _, task in self._held.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # a watcher canceled before it ever ran never reached its `finally`
        left, self._held = list(self._held.values()), {}
        for hold, _ in left:
            await asyncio.to_thread(hold.release)
