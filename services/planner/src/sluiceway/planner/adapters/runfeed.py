"""The scheduler's feed: an ephemeral pull consumer over the run facts it follows."""

from __future__ import annotations

import contextlib
import logging

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sluiceway.common import codec
from sluiceway.common.bus import Bus
from sluiceway.common.domain.events import RunEvent

log = logging.getLogger(__name__)

MAX_PER_POLL = 5000
# how long a fetch waits while the consumer has messages pending (it returns at the first batch)
FETCH_S = 5.0


class JetStreamRunFeed:
    """Reads `subjects` from the start of the run stream, then whatever is new at each poll.
    Each replica has its own (no acks, in memory); after an error it resumes after the last
    sequence it returned."""

    def __init__(self, bus: Bus, subjects: list[str], *, max_per_poll: int = MAX_PER_POLL) -> None:
        self._bus = bus
        self._subjects = subjects
        self._sub = None  # type: ignore[var-annotated]
        self._last = 0
        self._max = max_per_poll
        # the last poll reached the end of the stream (False: it stopped at max_per_poll)
        self.caught_up = False
        self.delivered = 0  # messages read from the stream, in all (start-up cost)

    @property
    def position(self) -> int:
        return self._last

    def resume_after(self, seq: int) -> None:
        """Start after `seq` (a snapshot's position) instead of the stream's start."""
        if self._sub is not None:
            raise RuntimeError("resume_after is for a feed that has not started")
        self._last = seq

    async def _subscribe(self):  # type: ignore[no-untyped-def]
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self._last else DeliverPolicy.ALL,
            opt_start_seq=self._last + 1 if self._last else None,
            inactive_threshold=60.0,
            mem_storage=True,
            filter_subjects=self._subjects,
        )
        return await self._bus.js.pull_subscribe("", stream=self._bus.names.runs_stream, config=cfg)

    async def poll(self) -> list[RunEvent]:
        """What is new, at most max_per_poll events (memory stays bounded on a long history);
        `caught_up` says whether the stream's end was reached, as nats-server counts it (the
        consumer's pending messages), never because a fetch timed out: the first message of a
        filtered consumer far back on a long history can take longer than any short wait."""
        out: list[RunEvent] = []
        self.caught_up = False
        try:
            if self._sub is None:
                self._sub = await self._subscribe()
            pending = (await self._sub.consumer_info()).num_pending
            while pending and len(out) < self._max:
                try:
                    msgs = await self._sub.fetch(min(500, self._max - len(out)), timeout=FETCH_S)
                except (TimeoutError, NatsTimeoutError):
                    break  # pending but not delivered yet: not caught up, the next poll goes on
                self.delivered += len(msgs)
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    if seq <= self._last:
                        continue
                    self._last = seq
                    try:
                        out.append(codec.decode(msg.data, subject=msg.subject))
                    except codec.Poison as exc:
                        log.warning("scheduler feed: skipping seq %d: %s", seq, exc)
                pending = msgs[-1].metadata.num_pending if msgs else pending
            self.caught_up = not pending
        except Exception:
            # resubscribe after the last seq returned; what was read so far is kept
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
            self._sub = None
            if not out:
                raise
        return out

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
