"""Process plumbing shared by the service entry points: signals and the ready file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sluiceway.common import crash, telemetry
from sluiceway.common.settings import Settings, SettingsError

Serve = Callable[[Settings, asyncio.Event], Awaitable[None]]


def write_ready_file(path: str, **info: Any) -> None:
    """Atomically write {"pid": ..., **info} once the service is serving. Tests and `sluiceway up`
    wait for it to learn bound ports (services may bind port 0)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, target)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the signal to shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(name: str, serve: Serve) -> None:
    """The entry point of `python -m sluiceway.<name>`: JSON logs, tracing, settings from the
    environment (a bad one exits 1 with one line naming the variable), then serve until SIGTERM."""
    telemetry.init_logging(name)
    telemetry.init_tracing(name)
    try:
        settings = Settings.from_env()
        crash.arm(os.environ.get(crash.ENV, ""))
    except (SettingsError, crash.UnknownCrashPoint) as exc:
        print(f"sluiceway-{name}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

    async def main() -> None:
        await serve(settings, stop_event())

    asyncio.run(main())
