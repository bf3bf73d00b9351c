"""Webhook notifications through a real stack: a local HTTP endpoint receives a notice for a
failed run, a run whose schema changed and a degraded one, never for a clean success; an
endpoint that fails is retried until it takes the notice; every notice is signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2, tracker_pb2
from tests.support.eventually import eventually
from tests.support.sqlitedb import items_db
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-5d1e"
TOKEN = "hook-token-99ab"  # in the URL's query: it must never show in a log

CONFIG = """
version: 1
exports:
  - name: items
    source: {engine: sqlite, path: items.db}
    table: items
    destination: out
  - name: missing
    source: {engine: sqlite, path: items.db}
    table: no_such_table
    destination: out
  - name: checked
    source: {engine: sqlite, path: items.db}
    table: items
    destination: out
    quality: {null_ratio_max: {name: 0.0}, on_violation: warn}
"""


@dataclass
class Receiver:
    """An HTTP endpoint on a loopback port it bound itself; answers 503 to the first
    `fail_first` requests of each delivery id."""

    fail_first: int = 0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # delivery ids answered 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append((headers, body))
                    seen = sum(
                        1
                        for h, _ in receiver.requests
                        if h.get("sluiceway-delivery") == headers.get("sluiceway-delivery")
                    )
                    status = 503 if seen <= receiver.fail_first else 200
                    if status == 200:
                        receiver.accepted.append(headers.get("sluiceway-delivery", ""))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def notices(self) -> list[dict[str, object]]:
        with self.lock:
            return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rx = Receiver(fail_first=1)
    server = rx.start()
    yield rx, f"http://127.0.0.1:{server.server_address[1]}/hooks?token={TOKEN}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, receiver: tuple[Receiver, str]
) -> Iterator[Stack]:
    env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": namespace,
        "SLUICEWAY_WEBHOOK_URL": receiver[1],
        "SLUICEWAY_WEBHOOK_SECRET": SECRET,
        # the endpoint's 503 is retried after 0.5 s
        "SLUICEWAY_CONSUMER_ACK_WAIT_S": "5",
    }
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


def _run(stack: Stack, config: Path, export: str) -> tracker_pb2.RunSummary:
    return run_export(stack, config, export, timeout_s=120)


async def test_failed_changed_and_degraded_runs_are_notified_and_clean_ones_are_not(
    stack: Stack, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    rx, _ = receiver
    db = items_db(tmp_path / "items.db", 200)
    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)

    clean = await asyncio.to_thread(_run, stack, config, "items")
    assert clean.status == events_pb2.RUN_STATUS_SUCCEEDED, clean.error_message
    failed = await asyncio.to_thread(_run, stack, config, "missing")
    assert failed.status == events_pb2.RUN_STATUS_FAILED
    # the notices go out in the order the runs ended: once the failure's is in, the clean
    # run's RunCompleted was handled before it, and sent nothing
    await eventually(
        lambda: failed.run_id in rx.accepted, timeout_s=30, what="the failed run's notice"
    )
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE items ADD COLUMN colour TEXT")
        con.execute("UPDATE items SET name = NULL WHERE id = 3")
    changed = await asyncio.to_thread(_run, stack, config, "items")
    assert changed.status == events_pb2.RUN_STATUS_SUCCEEDED, changed.error_message
    degraded = await asyncio.to_thread(_run, stack, config, "checked")
    assert degraded.status == events_pb2.RUN_STATUS_SUCCEEDED, degraded.error_message
    await eventually(
        lambda: {degraded.run_id, changed.run_id} <= set(rx.accepted),
        timeout_s=30,
        what="the changed and the degraded runs' notices",
    )

    by_run: dict[str, list[tuple[dict[str, str], bytes]]] = {}
    for headers, body in rx.requests:
        by_run.setdefault(headers["sluiceway-delivery"], []).append((headers, body))
    assert clean.run_id not in by_run
    assert set(by_run) == {failed.run_id, changed.run_id, degraded.run_id}
    for run_id, got in by_run.items():
        # the first answer was 503: the notice came again, the same, until it was taken
        assert len(got) == 2, run_id
        assert got[0][1] == got[1][1]
        headers, body = got[-1]
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["sluiceway-signature"] == f"sha256={expected}"
        assert headers["content-type"] == "application/json"

    notice = {str(n["run_id"]): n for n in rx.notices()}
    assert notice[failed.run_id]["reasons"] == ["failed"]
    assert notice[failed.run_id]["event"] == "run.failed"
    assert "no_such_table" in str(notice[failed.run_id]["error_message"])
    assert notice[changed.run_id]["reasons"] == ["schema_changed"]
    assert notice[changed.run_id]["schema_changes"] == [
        {"added": ["colour"], "removed": [], "type_changed": []}
    ]
    assert notice[degraded.run_id]["reasons"] == ["degraded"]
    assert notice[degraded.run_id]["quality_issues"]
    assert notice[degraded.run_id]["rows"] == 200

    # the URL's token and the secret never reach a log
    for log in Path(stack.state.state_dir).rglob("*.log"):
        text = log.read_text(errors="replace")
        assert TOKEN not in text and SECRET not in text, log
