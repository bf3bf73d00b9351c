"""Bounded polling instead of sleep: await eventually(lambda: ..., timeout_s=...)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns a truthy value; raise TimeoutError with the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        last = value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout_s}s (last: {last!r})")
        await asyncio.sleep(interval_s)
