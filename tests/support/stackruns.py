"""Runs through a test's stack with the client SDK, as its local admin: submit an export of
a config file and wait for its end; kill the armed worker mid-run and restart it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sluiceway.cli.stack import Stack
from sluiceway.client import Client, ClientOptions, config_file, with_token
from sluiceway.common import crash
from sluiceway.v1 import events_pb2, tracker_pb2
from tests.support.faults import wait_sigkilled

T = TypeVar("T")
ARMED = "worker-1"  # the instance a test arms with a crash point
MID_READ = {ARMED: {crash.ENV: "worker.mid_read@1"}}  # start_stack's instance_env


def client(stack: Stack) -> Client:
    options = with_token(ClientOptions(timeout_s=15), stack.token())
    return Client(stack.state.control_addr, stack.state.tracker_addr, options)


def run_export(
    stack: Stack, config: Path, export: str, *, timeout_s: float = 180
) -> tracker_pb2.RunSummary:
    """Submit `export` of the config file and wait for the run to end (blocking)."""
    with client(stack) as c:
        return c.wait(c.submit(config_file(config, export)).run_id, timeout_s=timeout_s)


async def with_armed_worker_killed(stack: Stack, run: Callable[[], T]) -> T:
    """Start `run` (blocking, in a thread), wait until the armed worker died by SIGKILL (its
    crash point fired), restart it without the crash point, and return what `run` returns."""
    running = asyncio.create_task(asyncio.to_thread(run))
    info = next(p for p in stack.state.processes if p.name == ARMED)
    await asyncio.to_thread(wait_sigkilled, stack.procs[ARMED], 60, info.log)
    await asyncio.to_thread(stack.restart, ARMED, drop_env=(crash.ENV,))
    return await running


def killed_attempt(stack: Stack, run_id: str) -> events_pb2.ChunkStarted:
    """The first chunk attempt the armed worker started in the run (the one it died in)."""
    with client(stack) as c:
        return next(
            e.event.chunk_started
            for e in c.iter_events(run_id)
            if e.kind == "chunk_started" and e.event.producer.instance == ARMED
        )
