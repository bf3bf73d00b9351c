"""Webhook notifications of ended runs: a durable consumer of the runs' `completed` facts.

Each `RunCompleted` is delivered to one committer replica (the `committer-notify` durable
consumer, shared by all). The replica reads the run's history, decides with
`domain.notify.notice_of` and POSTs the notice as JSON to SLUICEWAY_WEBHOOK_URL; the fact is
acked only after the endpoint answered 2xx, so a notice survives a committer crash or an
endpoint that is down (at least once: the `Sluiceway-Delivery` header, the run id, lets the
receiver drop a repeat). A notice is sent last: after the run's final fact is stored. An
endpoint that keeps failing is given up after MAX_DELIVERIES attempts (about 10 minutes),
logged as an error. With SLUICEWAY_WEBHOOK_SECRET set, `Sluiceway-Signature: sha256=<hex>` is
the HMAC-SHA256 of the body with it. The URL is a secret (it may hold a token): only its
scheme and host are ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from sluiceway.committer.domain.notify import REASONS, notice_of
from sluiceway.common.bus import Bus
from sluiceway.common.domain.events import RunCompleted, RunEvent
from sluiceway.common.domain.run import fold

log = logging.getLogger(__name__)

MAX_DELIVERIES = 25
TIMEOUT_S = 10.0


class WebhookError(Exception):
    """The endpoint did not take the notice (a status other than 2xx, or no answer)."""


def where(url: str) -> str:
    """What may be logged of the URL: its scheme and host."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or '?'}"


class Notifier:
    def __init__(
        self,
        bus: Bus,
        url: str,
        *,
        secret: str = "",
        wanted: frozenset[str] = frozenset(REASONS),
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._bus = bus
        self._url = url
        self._secret = secret.encode()
        self._wanted = wanted
        self._timeout_s = timeout_s

    @property
    def subjects(self) -> list[str]:
        return [f"{self._bus.names.namespace}.runs.*.completed"]

    async def handle(self, event: RunEvent, delivered: int) -> None:
        if not isinstance(event.body, RunCompleted):
            return
        history = await self._bus.history(event.run_id)
        state = fold((e for _, e in history), event.run_id)
        notice = notice_of(state, self._wanted)
        if notice is None:
            return
        body = json.dumps(notice.payload, sort_keys=True).encode()
        try:
            status = await asyncio.to_thread(self._post, event.run_id, body)
        except WebhookError as exc:
            if delivered >= MAX_DELIVERIES:
                log.error(
                    "webhook %s: giving up the notice of run %s after %d attempts: %s",
                    where(self._url),
                    event.run_id,
                    delivered,
                    exc,
                )
                return
            raise
        log.info(
            "webhook %s: run %s notified (%s), status %d",
            where(self._url),
            event.run_id,
            ", ".join(notice.reasons),
            status,
        )

    def _post(self, run_id: str, body: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sluiceway-committer",
            "Sluiceway-Delivery": run_id,
        }
        if self._secret:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["Sluiceway-Signature"] = f"sha256={digest}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise WebhookError(f"status {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WebhookError(f"no answer ({type(reason).__name__})") from None
        if not 200 <= status < 300:
            raise WebhookError(f"status {status}")
        return status
