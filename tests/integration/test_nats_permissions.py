"""The whole stack over NATS TLS, each service as its own NATS user allowed only its subjects
(natsauth.permissions): an export runs end to end, and a process holding the worker's
credentials is refused by nats-server when it appends a ManifestCommitted, writes an export's
state, purges the run log, reads the run log as a consumer, or listens to the tracker's
replies."""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from sluiceway.cli.stack import start_stack
from sluiceway.client import Client, ClientOptions, config_file, with_token
from sluiceway.common.bus import Names
from sluiceway.common.natsauth import SERVICES, inbox_prefix
from sluiceway.v1 import events_pb2
from tests.support.securenats import SecureNats
from tests.support.sqlitedb import items_db

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
  - name: items
    source: {engine: sqlite, path: items.db}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 250
    destination: out
"""


async def test_the_stack_runs_over_tls_as_one_user_per_service_and_each_may_only_its_part(
    tmp_path: Path,
) -> None:
    ns = "perm" + secrets.token_hex(3)
    names = Names(ns)
    secure = await asyncio.to_thread(SecureNats(tmp_path / "nats", names).start)
    server, passwords, ca_file = secure.server, secure.passwords, secure.ca_file
    try:
        items_db(tmp_path / "items.db", 1000)
        (tmp_path / "exports.yaml").write_text(CONFIG)
        env = {**os.environ, "SLUICEWAY_NAMESPACE": ns, **secure.env()}
        stack = await asyncio.to_thread(
            start_stack,
            tmp_path / "state",
            workers=1,
            nats_url=server.url,
            nats_users_dir=secure.users_dir,
            env=env,
        )
        try:
            options = with_token(ClientOptions(timeout_s=15), stack.token())
            with Client(stack.state.control_addr, stack.state.tracker_addr, options) as c:
                run_id = c.submit(config_file(tmp_path / "exports.yaml", "items")).run_id
                done = await asyncio.to_thread(c.wait, run_id, timeout_s=120)
            assert done.status == events_pb2.RUN_STATUS_SUCCEEDED, done.error_message
            assert done.total_rows == 1000 and done.manifest_parts == 4
            assert all(p.poll() is None for p in stack.procs.values())
        finally:
            await asyncio.to_thread(stack.stop)
        # no NATS password (nor the stack's API token) in anything the stack wrote: logs,
        # DuckDB, parts, manifests, the stream's store
        leaks = [p.encode() for p in passwords.values()] + [stack.token().encode()]
        for root in (tmp_path / "state", tmp_path / "out", tmp_path / "nats" / "store"):
            for path in root.rglob("*"):
                if path.is_file() and path.parent.name != "auth":
                    data = path.read_bytes()
                    assert not [s for s in leaks if s in data], f"{path} holds a secret"

        # ---- a process with the worker's credentials --------------------------------------
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        context = ssl.create_default_context(cafile=str(ca_file))
        nc = await nats.connect(
            server.url,
            user="worker",
            password=passwords["worker"],
            tls=context,
            inbox_prefix=inbox_prefix("worker"),
            error_cb=on_error,
            allow_reconnect=False,
        )
        try:
            js = nc.jetstream(timeout=2)
            forged = f"{ns}.runs.{run_id}.manifest_committed.items"
            with pytest.raises((NatsError, asyncio.TimeoutError)):
                await js.publish(forged, b"forged")
            with pytest.raises((NatsError, asyncio.TimeoutError)):
                await js.pull_subscribe(f"{ns}.runs.>", stream=names.runs_stream)
            # nor move an export's committed cursor, nor purge the run log's history
            forged_state = names.export_state("commit", "items")
            with pytest.raises((NatsError, asyncio.TimeoutError)):
                await js.publish(forged_state, b"forged")
            with pytest.raises((NatsError, asyncio.TimeoutError)):
                await js.purge_stream(names.runs_stream, seq=2)
            await nc.subscribe(f"{inbox_prefix('tracker')}.>")
            await nc.flush(timeout=2)
            # what the worker may do still works: its own kind of fact
            allowed = await js.publish(f"{ns}.runs.{run_id}.warning", b"x")
            assert allowed.seq > 0
            for _ in range(50):
                if len(refusals) >= 5:
                    break
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        # the server's own errors (nats-py hands them over lower-cased)
        said = "\n".join(refusals)
        assert f'permissions violation for publish to "{forged.lower()}"' in said
        assert 'permissions violation for publish to "$js.api.consumer.create' in said
        assert f'permissions violation for publish to "{forged_state.lower()}"' in said
        purge = f"$js.api.stream.purge.{names.runs_stream.lower()}"
        assert f'permissions violation for publish to "{purge}"' in said
        tracker_replies = f"{inbox_prefix('tracker')}.>".lower()
        assert f'permissions violation for subscription to "{tracker_replies}"' in said

        # ---- and without credentials, or without TLS, nobody gets in -----------------------
        with pytest.raises((NatsError, OSError)):
            await nats.connect(server.url, tls=context, allow_reconnect=False, connect_timeout=2)
        with pytest.raises((NatsError, OSError, ssl.SSLError)):
            await nats.connect(
                server.url,
                user="worker",
                password=passwords["worker"],
                allow_reconnect=False,
                connect_timeout=2,
            )
    finally:
        server.stop()


async def test_the_local_stacks_own_nats_server_admits_only_its_services(tmp_path: Path) -> None:
    """`sluiceway up` starts nats-server with the same per-service users (random passwords in
    files only their owner reads): an anonymous client is refused."""
    env = {**os.environ, "SLUICEWAY_NAMESPACE": "own" + secrets.token_hex(3)}
    stack = await asyncio.to_thread(start_stack, tmp_path / "state", workers=1, env=env)
    try:
        users = Path(stack.state.nats_users_dir)
        assert sorted(p.name for p in users.glob("*.password")) == sorted(
            f"{s}.password" for s in SERVICES
        )
        assert all(p.stat().st_mode & 0o077 == 0 for p in users.iterdir())
        with pytest.raises((NatsError, OSError)):
            await nats.connect(stack.state.nats_url, allow_reconnect=False, connect_timeout=2)
        nc = await nats.connect(
            stack.state.nats_url,
            user="tracker",
            password=(users / "tracker.password").read_text().strip(),
            inbox_prefix=inbox_prefix("tracker"),
            allow_reconnect=False,
        )
        await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)
