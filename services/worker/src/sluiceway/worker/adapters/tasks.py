"""Chunk task deliveries from the shared JetStream pull consumer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from sluiceway.common.bus import Names
from sluiceway.common.domain.events import PRIORITY_NORMAL
from sluiceway.worker.domain.lanes import LaneState, effective_priority, lane_order


class JetStreamDelivery:
    """A task message with the ack / nak / term / in-progress vocabulary the flow uses."""

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.data = msg.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self._msg.headers

    @property
    def attempt(self) -> int:
        return int(self._msg.metadata.num_delivered or 1)

    async def ack(self) -> None:
        # ack_sync: the task leaves the work queue only once the server confirms it
        await self._msg.ack_sync()

    async def nak(self, delay_s: float) -> None:
        await self._msg.nak(delay=delay_s)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class LanePicker:
    """Takes the next task from the priority lanes (one durable consumer each), choosing the
    lane by `lane_order` over each lane's waiting count and the age of its oldest waiting task
    (one consumer info, plus one message get for a lane with waiting tasks)."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        subs: dict[int, JetStreamContext.PullSubscription],
        durables: dict[int, str],
        *,
        aging_s: float,
    ) -> None:
        self._js = js
        self._names = names
        self._subs = subs
        self._durables = durables
        self._aging_s = aging_s

    async def _lane(self, priority: int, now: datetime) -> LaneState:
        stream = self._names.tasks_stream
        info = await self._js.consumer_info(stream, self._durables[priority])
        waiting = int(info.num_pending or 0)
        age = 0.0
        if waiting:
            after = (info.delivered.stream_seq or 0) if info.delivered is not None else 0
            try:
                raw = await self._js.get_msg(
                    stream, seq=after + 1, next=True, subject=self._names.task_lane(priority)
                )
            except NotFoundError:
                return LaneState(priority, 0)
            if raw.time is not None:
                queued = raw.time if raw.time.tzinfo else raw.time.replace(tzinfo=UTC)
                age = (now - queued).total_seconds()
        return LaneState(priority, waiting, age)

    async def next(self, timeout_s: float) -> tuple[Msg, int] | None:
        """(task message, effective priority), or None when nothing came within `timeout_s`."""
        now = datetime.now(UTC)
        lanes = [await self._lane(p, now) for p in self._subs]
        for lane in lane_order(lanes, self._aging_s):
            try:
                msgs = await self._subs[lane.priority].fetch(1, timeout=0.5)
            except NatsTimeoutError:
                continue  # another worker took it
            if msgs:
                return msgs[0], effective_priority(lane.priority, lane.oldest_age_s, self._aging_s)
        # nothing waiting: wait on the normal lane, where most tasks arrive; a task on another
        # lane is seen at the next call, within `timeout_s`
        try:
            msgs = await self._subs[PRIORITY_NORMAL].fetch(1, timeout=timeout_s)
        except NatsTimeoutError:
            return None
        return (msgs[0], PRIORITY_NORMAL) if msgs else None
