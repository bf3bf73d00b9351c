"""Process plumbing shared by the service entry points: signals and the ready file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any


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
