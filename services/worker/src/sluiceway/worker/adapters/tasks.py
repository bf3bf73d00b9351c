"""Chunk task deliveries from the shared JetStream pull consumer."""

from __future__ import annotations

from collections.abc import Mapping

from nats.aio.msg import Msg


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
