"""The client SDK against a real stack (nats-server, planner, committer, tracker, a worker):
submit -> watch -> wait -> get -> list -> events with the async client; cancel and typed errors
for bad input and unknown runs with the blocking one."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.client import (
    AsyncClient,
    Client,
    ClientOptions,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    config_document,
    config_file,
    with_token,
)
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2

pytestmark = pytest.mark.integration

ROWS = 3_000
CONFIG = """
version: 1
exports:
  - name: items
    source: {engine: sqlite, path: items.db}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 1000
    destination: out
  # 300 chunks on one worker: still running when a cancel lands
  - name: many
    source: {engine: sqlite, path: items.db}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 10
    destination: out
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    con = sqlite3.connect(tmp_path / "items.db")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(ROWS)])
    con.commit()
    con.close()
    path = tmp_path / "exports.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def stack(tmp_path: Path, nats_server: LocalNats, namespace: str) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


async def test_submit_watch_wait_get_list_and_events(stack: Stack, config: Path) -> None:
    options = with_token(ClientOptions(), stack.token())
    async with AsyncClient(stack.state.control_addr, stack.state.tracker_addr, options) as client:
        plan = await client.plan(config_file(config, "items"))
        assert plan.plan.plan_id and len(plan.plan.chunks) == 3

        resp = await client.submit(
            config_file(config, "items"), requested_by="sdk-test", options={"ticket": "T-1"}
        )
        assert resp.export_name == "items" and resp.stream_seq > 0
        # read your own write: visible as soon as the tracker has applied the request
        first = await client.get(resp.run_id, min_seq=resp.stream_seq, wait_s=30)
        assert first.run_id == resp.run_id and first.last_seq >= resp.stream_seq

        watched = [stored async for stored in client.watch(resp.run_id)]
        seqs = [stored.seq for stored in watched]
        assert seqs == sorted(set(seqs)) and seqs[0] == resp.stream_seq
        assert watched[0].event.WhichOneof("body") == "run_requested"
        assert watched[-1].event.WhichOneof("body") == "run_completed"

        final = await client.wait(resp.run_id, min_seq=resp.stream_seq, timeout_s=60)
        assert final.status == events_pb2.RUN_STATUS_SUCCEEDED
        assert (final.total_rows, final.chunks_completed) == (ROWS, 3)
        again = await client.get(resp.run_id)
        assert again.status == final.status and again.last_seq == seqs[-1]
        assert [j.seq for j in again.journal] == seqs

        listed = [r.run_id async for r in client.iter_runs(export_name="items", page_size=1)]
        assert listed == [resp.run_id]
        succeeded = client.iter_runs(statuses=[events_pb2.RUN_STATUS_SUCCEEDED], limit=5)
        assert resp.run_id in [r.run_id async for r in succeeded]

        events = [e async for e in client.iter_events(resp.run_id, page_size=4)]  # several pages
        assert [e.seq for e in events] == seqs
        requested = events[0].event.run_requested
        assert dict(requested.options) == {"ticket": "T-1"}
        # the client's label is not trusted: the run is the authenticated principal's
        assert (requested.requested_by, requested.owner) == ("local-admin", "local-admin")
        assert again.owner == "local-admin"
        assert len((await client.list_chunks(resp.run_id)).chunks) == 3
        parts = (await client.list_parts(resp.run_id)).parts
        assert sum(p.rows for p in parts if p.committed) == ROWS


def test_cancel_and_typed_errors_with_the_blocking_client(stack: Stack, config: Path) -> None:
    options = with_token(ClientOptions(), stack.token())
    with Client(stack.state.control_addr, stack.state.tracker_addr, options) as client:
        resp = client.submit(config_file(config, "many"), requested_by="sdk-test")
        canceled = client.cancel(resp.run_id, reason="wrong day", requested_by="sdk-test")
        assert canceled.run_id == resp.run_id and canceled.stream_seq > resp.stream_seq
        final = client.wait(resp.run_id, min_seq=canceled.stream_seq, timeout_s=120)
        assert final.status == events_pb2.RUN_STATUS_CANCELED
        assert "wrong day" in final.error_message
        kinds = [e.kind for e in client.iter_events(resp.run_id)]
        assert "cancel_requested" in kinds

        with pytest.raises(FailedPrecondition, match="already ended CANCELED"):
            client.cancel(resp.run_id)
        for unknown in (
            lambda: client.get("no-such-run"),
            lambda: client.cancel("no-such-run"),
            lambda: list(client.watch("no-such-run")),
            lambda: list(client.iter_events("no-such-run")),
        ):
            with pytest.raises(NotFound, match="run 'no-such-run' not found"):
                unknown()

        with pytest.raises(InvalidArgument) as bad_id:
            client.get("bad id!")
        assert bad_id.value.field == "run_id" and "is invalid" in bad_id.value.message
        missing = CONFIG.replace("items.db", "missing.db")
        with pytest.raises(InvalidArgument) as bad_source:
            client.submit(config_document(missing, "items", base_dir=str(config.parent)))
        assert bad_source.value.field == "source.path"
        assert "no such database file" in bad_source.value.message
        with pytest.raises(InvalidArgument) as too_long:
            client.submit(config_file(config, "items"), requested_by="x" * 300)
        assert too_long.value.field == "requested_by"
        with pytest.raises(InvalidArgument) as bad_token:
            client.list_runs(page_token="not-a-token")
        assert bad_token.value.field == "page_token"
