"""Where the CLI finds the services, and the SDK client it talks to them with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sluiceway.cli import stack as stackmod
from sluiceway.client import Client, ClientOptions, RetryPolicy

NO_STACK = "no stack is running (start one with `sluiceway up`)"
# A followed run outlives a tracker restart: about a minute of reconnections that bring nothing
# (backoff 0.2 s doubling to 5 s) before `run --wait`/`watch` give up (exit 2).
CLI_OPTIONS = ClientOptions(timeout_s=30.0, plan_timeout_s=120.0, watch_retry=RetryPolicy(20))


class NoStack(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    control_addr: str
    tracker_addr: str


def resolve_endpoints(
    state_dir: str | Path,
    *,
    control: str | None = None,
    tracker: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoints:
    """Flags first, then SLUICEWAY_CONTROL_ADDR / SLUICEWAY_TRACKER_ADDR, then state.json."""
    e = os.environ if env is None else env
    c = control or e.get("SLUICEWAY_CONTROL_ADDR", "")
    t = tracker or e.get("SLUICEWAY_TRACKER_ADDR", "")
    if not (c and t):
        state = stackmod.read_state(state_dir)
        if state is not None:
            c = c or state.control_addr
            t = t or state.tracker_addr
    if not (c and t):
        raise NoStack(NO_STACK)
    return Endpoints(c, t)


def connect(endpoints: Endpoints) -> Client:
    """The SDK's blocking client for both APIs; close it (or use `with`)."""
    return Client(endpoints.control_addr, endpoints.tracker_addr, CLI_OPTIONS)
