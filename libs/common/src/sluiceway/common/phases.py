"""Where a chunk attempt's time goes: seconds per phase, added up by whoever does the work.

The phases of one attempt, in the order they first happen:

- `connect`: opening the reading session (only when the kept one cannot be reused);
- `count`: the range's `COUNT(*)` (reconciliation), in the read's snapshot;
- `first_byte`: from sending the SELECT to the first batch;
- `read`: waiting for the driver's next batches (the reader thread);
- `convert`: conforming the driver's batches to the plan's Arrow schema (and hashing each
  row, with `row_hash`);
- `encode`: encoding and writing row groups (Parquet/CSV);
- `fsync`: making each finished part durable (file fsync, rename, directory fsync; an upload
  for an object store);
- `events`: appending the chunk's facts to the run stream.

`read` and `convert` run in the reader thread while `encode` runs in the writer, so an
attempt's phases can add up to more than its wall time: each phase is busy time. Recording is
one addition per batch, never per row.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

PHASES = ("connect", "count", "first_byte", "read", "convert", "encode", "fsync", "events")


class Phases:
    """Seconds per phase of one chunk attempt; safe to add to from several threads."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        if phase not in self._seconds:
            raise ValueError(f"unknown phase {phase!r} (expected one of: {', '.join(PHASES)})")
        with self._lock:
            self._seconds[phase] += seconds

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


@contextlib.contextmanager
def timed(phases: Phases | None, phase: str) -> Iterator[None]:
    """Add the time the block takes to `phase` of `phases` (nothing when None)."""
    if phases is None:
        yield
        return
    began = time.perf_counter()
    try:
        yield
    finally:
        phases.add(phase, time.perf_counter() - began)


def timed_batches(batches: Iterator[T], phases: Phases | None) -> Iterator[T]:
    """`batches` as they are, the wait for the first one added to `first_byte` and the wait
    for each later one to `read`."""
    if phases is None:
        yield from batches
        return
    phase = "first_byte"
    while True:
        began = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            phases.add(phase, time.perf_counter() - began)
            return
        phases.add(phase, time.perf_counter() - began)
        phase = "read"
        yield batch
