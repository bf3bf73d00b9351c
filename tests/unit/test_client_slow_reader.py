"""The SDK's watch against the real Tracker servicer and its DuckDB store on a real grpc.aio
server: a reader that pauses is cut off by the server (its write blocks on HTTP/2 flow control,
RESOURCE_EXHAUSTED), and the client resumes so that every journal event arrives exactly once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from sluiceway.client import AsyncClient, ClientOptions
from sluiceway.common.authn import Audit, Authenticator, AuthInterceptor
from sluiceway.common.domain import events as ev
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.adapters.servicer import TrackerServicer
from sluiceway.tracker.app import Db
from sluiceway.v1 import tracker_pb2_grpc
from tests.unit.test_tracker_servicer import Progress
from tests.unit.test_tracker_store import raw, run_history

WARNINGS = 2_000  # about 1 MB of journal: far more than one HTTP/2 flow-control window


class RecordingServicer(TrackerServicer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch_from: list[int] = []

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.watch_from.append(request.from_seq)
        await super().WatchRun(request, context)


def history(run_id: str) -> list[ev.RunEvent]:
    events = run_history(run_id)
    noise = [
        replace(
            events[-1],
            event_id=f"{run_id}/warning/{i}",
            body=ev.Warning(context="test", message=f"{i:06d} " + "x" * 500),
        )
        for i in range(WARNINGS)
    ]
    return events[:-4] + noise + events[-4:]


async def test_a_reader_cut_off_for_pausing_resumes_and_misses_nothing(tmp_path: Path) -> None:
    store = TrackerStore(tmp_path / "t.duckdb")
    journal = raw(history("r1"))
    store.apply(journal)
    db = Db(store)
    servicer = RecordingServicer(db, Progress(store.offset()), slow_client_timeout_s=0.2)
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(None), Audit())])
    tracker_pb2_grpc.add_TrackerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # no BDP probing: the stream's window stays at its initial 64 KiB, so a pause blocks writes
    options = ClientOptions(channel_options=[("grpc.http2.bdp_probe", 0)])
    try:
        async with AsyncClient(tracker=f"127.0.0.1:{port}", options=options) as client:
            seqs = []
            async for stored in client.watch("r1"):
                seqs.append(stored.seq)
                if len(seqs) in (200, 1200):
                    await asyncio.sleep(1.0)  # the pause that gets this reader cut off
    finally:
        await server.stop(grace=None)
        await db.close()
    assert seqs == [m.seq for m in journal] and len(journal) > WARNINGS
    resumed = servicer.watch_from[1:]
    assert resumed, "the server never cut the pausing reader off"
    assert all(from_seq in seqs for from_seq in resumed)  # each resume after a delivered seq
