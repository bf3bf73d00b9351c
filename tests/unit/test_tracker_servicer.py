"""The Tracker servicer with fake gRPC contexts: a slow watcher is cut off, never buffered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from sluiceway.common.authn import acting_as
from sluiceway.common.domain.access import ANONYMOUS
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.adapters.servicer import (
    TrackerServicer,
    decode_page_token,
    encode_page_token,
)
from sluiceway.tracker.app import Db
from sluiceway.v1 import tracker_pb2
from tests.unit.test_tracker_store import raw, run_history


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class StuckClient:
    """A client that never reads: every write blocks."""

    def __init__(self) -> None:
        self.written = 0

    async def write(self, _msg: Any) -> None:
        self.written += 1
        if self.written > 2:
            await asyncio.Event().wait()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Progress:
    def __init__(self, applied: int) -> None:
        self.applied_seq = applied
        self._event = asyncio.Event()

    def progress_marker(self) -> asyncio.Event:
        return self._event

    def run_marker(self, run_id: str) -> asyncio.Event:
        return self._event


async def test_a_client_that_stops_reading_is_cut_off_with_a_resumable_seq(
    tmp_path: Path,
) -> None:
    store = TrackerStore(tmp_path / "t.duckdb")
    store.apply(raw(run_history("r1")))
    db = Db(store)
    servicer = TrackerServicer(db, Progress(store.offset()), slow_client_timeout_s=0.2)
    context = StuckClient()
    with acting_as(ANONYMOUS), pytest.raises(Aborted) as info:
        await asyncio.wait_for(
            servicer.WatchRun(tracker_pb2.WatchRunRequest(run_id="r1"), context), timeout=5
        )
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "from_seq=2" in info.value.details  # the last seq the client received
    await db.close()


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    from datetime import datetime

    at = datetime(2026, 3, 1, 12, 0, 0, 123456)
    token = encode_page_token(at, "run-1")
    back_at, back_id = decode_page_token(token)
    assert back_id == "run-1" and back_at.replace(tzinfo=None) == at
    for bad in ("%%", "bm90IGpzb24", encode_page_token(None, "x")[:-3] + "!!"):
        with pytest.raises(ValueError):
            decode_page_token(bad)
