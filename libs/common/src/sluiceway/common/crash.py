"""Crash points: named places where a process kills itself with SIGKILL, for fault tests.

`SLUICEWAY_CRASH_AT=<point>` arms one point in one process (`<point>@<n>` fires on the n-th
time the point is reached; the first by default). Unset, `point()` is one truthiness check.
The names are listed in POINTS and in docs/architecture.md ("Crash points").
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "SLUICEWAY_CRASH_AT"

POINTS: dict[str, str] = {
    "planner.after_plan": "after PlanResolved, before any chunk task",
    "planner.mid_tasks": "halfway through publishing the chunk tasks",
    "worker.mid_read": "in the middle of reading a chunk (after its first row group)",
    "worker.after_rename": "after a part's rename, before its FileWritten",
    "worker.mid_upload": "halfway through uploading a part (over 2 MiB) to an object store",
    "worker.after_file_written": "after FileWritten, before ChunkCompleted",
    "worker.after_chunk_completed": "after ChunkCompleted, before the task's ack",
    "committer.before_manifest": "after the gates, before manifest.json",
    "committer.after_manifest": "after manifest.json, before _SUCCESS",
    "committer.after_success": "after _SUCCESS, before ManifestCommitted",
    "committer.after_manifest_committed": "after ManifestCommitted, before the export state",
    "committer.after_state": "after the export state, before RunCompleted",
    "tracker.before_commit": "after applying a batch, before its transaction commits",
    "tracker.after_archive": "after storing an archive segment, before purging the stream",
}


class UnknownCrashPoint(ValueError):
    """A bad SLUICEWAY_CRASH_AT: the services refuse to start with it."""


def _parse(raw: str) -> tuple[str, int]:
    name, _, nth = raw.partition("@")
    if name not in POINTS:
        raise UnknownCrashPoint(f"{ENV}={raw!r}: unknown crash point (known: {', '.join(POINTS)})")
    try:
        count = int(nth) if nth else 1
    except ValueError:
        raise UnknownCrashPoint(f"{ENV}={raw!r}: expected <point>@<n>") from None
    if count < 1:
        raise UnknownCrashPoint(f"{ENV}={raw!r}: n counts from 1")
    return name, count


_armed: str = ""
_left: int = 0


def arm(raw: str) -> None:
    """Arm a point; service.run() calls this with the environment's value."""
    global _armed, _left
    if not raw:
        _armed, _left = "", 0
        return
    _armed, _left = _parse(raw)


def point(name: str) -> None:
    """Die here, at once and without cleanup, if this point is armed."""
    global _left
    if not _armed or name != _armed:
        return
    _left -= 1
    if _left > 0:
        return
    sys.stderr.write(f"crash point {name}: SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
