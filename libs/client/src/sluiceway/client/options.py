"""How a client connects (credentials, metadata, timeouts) and how `watch` retries."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded reconnection of `watch`: at most `max_attempts` reconnections in a row that bring
    no new event, waiting an exponential backoff with jitter before each (a stream that
    delivered an event resets the count)."""

    max_attempts: int = 10
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoff: need 0 <= initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before reconnection `attempt` (1-based): half fixed, half random, so that
        many clients cut off together do not come back together."""
        ceiling = min(
            self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempt - 1)
        )
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings shared by both APIs.

    `credentials`: TLS channel credentials (grpc.ssl_channel_credentials(...), possibly composed
    with call credentials); None for plaintext. `metadata` is sent with every call (e.g. an
    authorization header for a proxy). `timeout_s` bounds every unary call except PlanRun, which
    introspects the source and gets `plan_timeout_s`."""

    timeout_s: float = 30.0
    plan_timeout_s: float = 120.0
    credentials: grpc.ChannelCredentials | None = None
    metadata: Sequence[tuple[str, str]] = ()
    channel_options: Sequence[tuple[str, Any]] = ()
    interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    watch_retry: RetryPolicy = field(default_factory=RetryPolicy)


def with_token(options: ClientOptions, token: str) -> ClientOptions:
    """The same options, sending `authorization: Bearer <token>` with every call."""
    header = ("authorization", f"Bearer {token}")
    kept = [m for m in options.metadata if m[0] != "authorization"]
    return replace(options, metadata=(*kept, header))


class _Bearer:
    """Adds the authorization header to every call of a raw grpc.aio channel (for code that
    uses the generated stubs directly)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)


class BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for grpc.aio.insecure_channel/secure_channel(..., interceptors=...)."""
    return [BearerUnaryUnary(token), BearerUnaryStream(token)] if token else []
