"""A durable pull consumer over run events (planner-requests, committer-runs): decode ->
handle -> ack; term poison; nak with backoff on error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext
from opentelemetry import trace

from sluiceway.common import codec, telemetry
from sluiceway.common.bus import TRANSIENT, Bus
from sluiceway.common.domain.events import RunEvent

log = logging.getLogger(__name__)

Handler = Callable[[RunEvent, int], Awaitable[None]]
AfterMessage = Callable[[], Awaitable[None]]


def backoff_s(delivered: int, *, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    return float(min(cap_s, base_s * 2 ** max(0, delivered - 1)))


class RunEventConsumer:
    """Feeds one durable consumer's messages, one at a time and in order, to `handler`.
    An ack is sent only after the handler returned, i.e. after its effects are durable.

    Each message is handled in its run's trace (`telemetry.consuming`); `spans` names the
    event kinds whose handling is a span of its own (linked to the message's producer), and
    `after_message` runs once each message is settled (the run's root span is emitted there)."""

    def __init__(
        self,
        bus: Bus,
        durable: str,
        subjects: list[str],
        handler: Handler,
        *,
        batch: int = 32,
        ack_wait_s: float = 30.0,
        spans: Mapping[str, str] | None = None,
        after_message: AfterMessage | None = None,
        deliver_new: bool = False,
    ) -> None:
        self._bus = bus
        self._durable = durable
        self._subjects = subjects
        self._handler = handler
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._spans = dict(spans or {})
        self._after = after_message
        self._deliver_new = deliver_new
        self._sub: JetStreamContext.PullSubscription | None = None

    @property
    def durable(self) -> str:
        return self._durable

    async def pending(self) -> int:
        """Messages not yet delivered to this consumer (its lag)."""
        info = await self._bus.js.consumer_info(self._bus.names.runs_stream, self._durable)
        return int(info.num_pending or 0)

    async def start(self) -> None:
        await self._bus.ensure_run_consumer(
            self._durable,
            self._subjects,
            ack_wait_s=self._ack_wait_s,
            deliver_new=self._deliver_new,
        )
        self._sub = await self._bus.js.pull_subscribe_bind(
            durable=self._durable, stream=self._bus.names.runs_stream
        )

    async def run(self, stop: asyncio.Event) -> None:
        if self._sub is None:
            await self.start()
        assert self._sub is not None
        while not stop.is_set():
            try:
                msgs = await self._sub.fetch(self._batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except TRANSIENT as exc:  # a node lost, a leader being elected: it passes
                log.warning("fetch from %s failed: %r", self._durable, exc)
                await asyncio.sleep(0.5)
                continue
            except Exception:  # connection hiccup: the client reconnects by itself
                log.warning("fetch from %s failed", self._durable, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                if stop.is_set():
                    # unprocessed messages go back at once rather than after ack_wait
                    for rest in msgs[i:]:
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    return
                await self._one(msg)

    async def _one(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered or 1
        try:
            event = codec.decode(msg.data, subject=msg.subject)
        except codec.Poison as exc:  # final: decoding depends on the bytes alone
            log.error("terminating an undecodable message on %s: %s", msg.subject[:200], exc)
            try:
                await msg.term()
            except Exception:  # not terminated: it comes back after ack_wait and is retried
                log.warning("could not terminate the message on %s", msg.subject[:200])
            return
        except Exception:  # a fault of this version, not of the message: retried, never dropped
            log.exception("cannot decode the message on %s; retrying", msg.subject[:200])
            with contextlib.suppress(Exception):
                await msg.nak(delay=backoff_s(delivered))
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        name = self._spans.get(event.kind)
        try:
            with telemetry.consuming(event.run_id, msg.headers):
                if name is None:
                    await self._handler(event, delivered)
                else:
                    with telemetry.span(
                        name,
                        kind=trace.SpanKind.CONSUMER,
                        link_producer=True,
                        run_id=event.run_id,
                        delivery=delivered,
                    ):
                        await self._handler(event, delivered)
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff_s(delivered)
            log.warning(
                "handling %s failed (delivery %d); retry in %.1fs",
                event.kind,
                delivered,
                delay,
                exc_info=True,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
        else:
            try:
                await msg.ack()
            except Exception:  # the effects are durable; a redelivery finds them and does nothing
                log.warning("ack on %s failed; it will be redelivered", msg.subject[:200])
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if self._after is not None:
                await self._after()

    async def _heartbeat(self, msg: Msg) -> None:
        """Long handlers (a commit re-reads every part) keep the message from redelivery."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
