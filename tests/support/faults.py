"""Helpers of the fault harness: scenarios, process waits, a second tracker, the results table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from sluiceway.cli.stack import log_tail
from sluiceway.client import bearer_interceptors
from sluiceway.common import codec
from sluiceway.common.bus import Bus, Names, server_urls
from sluiceway.common.domain.events import RunEvent
from sluiceway.tracker.archive import Archive
from sluiceway.v1 import events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually

NATS_KILL = "nats-server.kill"

# crash point -> the one instance that carries SLUICEWAY_CRASH_AT
SCENARIOS: dict[str, str] = {
    "planner.after_plan": "planner-1",
    "planner.mid_tasks": "planner-1",
    "worker.mid_read": "worker-1",
    "worker.after_rename": "worker-1",
    "worker.after_file_written": "worker-1",
    "worker.after_chunk_completed": "worker-1",
    "committer.before_manifest": "committer-1",
    "committer.after_manifest": "committer-1",
    "committer.after_success": "committer-1",
    "committer.after_manifest_committed": "committer-1",
    "committer.after_state": "committer-1",
    "tracker.before_commit": "tracker-1",
    "tracker.after_archive": "tracker-1",
    NATS_KILL: "nats-server",
}

TERMINAL = (
    events_pb2.RUN_STATUS_SUCCEEDED,
    events_pb2.RUN_STATUS_FAILED,
    events_pb2.RUN_STATUS_CANCELED,
    events_pb2.RUN_STATUS_SKIPPED,
)


# ---- results ----------------------------------------------------------------------------------


@dataclass
class FaultResult:
    """One scenario's row of the table; filled in as the test gets further."""

    point: str
    instance: str
    variant: str = ""  # what the run exported, when not the key-range export: "pages, uuid key"
    status: str = "-"  # the run's terminal status, as the tracker reports it
    rows: int | None = None  # manifest row_count
    source_rows: int | None = None
    recover_s: float | None = None  # death (or nats kill) -> terminal state observed
    total_s: float | None = None  # the whole scenario, start of the stack to teardown


# nodeid -> result; read by the pytest_terminal_summary hook in tests/integration/conftest.py
RESULTS: dict[str, FaultResult] = {}


def _outcomes(terminalreporter: object) -> dict[str, str]:
    """nodeid -> passed | FAILED: <first line> | ERROR: <first line> from the reporter's stats."""
    stats: Mapping[str, list[object]] = getattr(terminalreporter, "stats", {})
    out: dict[str, str] = {}
    for key in ("passed", "failed", "error", "skipped"):
        for rep in stats.get(key, []):
            nodeid = getattr(rep, "nodeid", None)
            if nodeid not in RESULTS:
                continue
            when = getattr(rep, "when", "call")
            if key == "passed":
                out.setdefault(nodeid, "passed")
                continue
            msg = ""
            crash = getattr(getattr(rep, "longrepr", None), "reprcrash", None)
            if crash is not None:
                msg = str(getattr(crash, "message", "")).splitlines()[0][:70]
            label = "FAILED" if key == "failed" and when == "call" else key.upper()
            out[nodeid] = f"{label}: {msg}" if msg else label
    return out


def table(terminalreporter: object) -> tuple[list[str], list[dict[str, object]]]:
    """The rendered lines and the JSON rows of every scenario that ran."""
    outcomes = _outcomes(terminalreporter)
    rows: list[dict[str, object]] = []
    for nodeid, r in RESULTS.items():
        rows.append({**asdict(r), "outcome": outcomes.get(nodeid, "not run"), "test": nodeid})
    head = ("crash point", "instance", "outcome", "run status", "rows", "recover s", "total s")
    cells = [
        (
            f"{r['point']} ({r['variant']})" if r.get("variant") else str(r["point"]),
            str(r["instance"]),
            str(r["outcome"]),
            str(r["status"]),
            "-" if r["rows"] is None else f"{r['rows']:,}",
            "-" if r["recover_s"] is None else f"{r['recover_s']:.1f}",
            "-" if r["total_s"] is None else f"{r['total_s']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*c).rstrip() for c in cells]
    return lines, rows


def write_json(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"written_at": time.time(), "scenarios": rows}, indent=2) + "\n")
    os.replace(tmp, path)


# ---- processes --------------------------------------------------------------------------------


def wait_sigkilled(popen: subprocess.Popen[bytes], timeout_s: float, log: str = "") -> float:
    """Wait until `popen` has exited; assert it died by SIGKILL (the crash point fired).
    Returns time.monotonic() at the moment the death was seen."""
    deadline = time.monotonic() + timeout_s
    while popen.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"pid {popen.pid} still alive after {timeout_s:.0f}s: the crash point never "
                f"fired\n{log_tail(log, 15) if log else ''}"
            )
        time.sleep(0.05)
    seen = time.monotonic()
    assert popen.returncode == -signal.SIGKILL, (
        f"pid {popen.pid} exited with {popen.returncode}, not by SIGKILL\n{log_tail(log, 15)}"
    )
    return seen


def logs_tail(state_dir: Path, lines: int = 12) -> str:
    """The last lines of every service log of a stack, for failure messages."""
    out = []
    for log in sorted((state_dir / "logs").glob("*.log")):
        out.append(f"--- {log.name}\n{log_tail(log, lines)}")
    return "\n".join(out)


@contextlib.contextmanager
def fresh_tracker(
    workdir: Path,
    env: Mapping[str, str],
    nats_url: str,
    timeout_s: float = 60.0,
    *,
    instance: str = "tracker-rebuild",
) -> Iterator[str]:
    """A second tracker process with its own (empty) DuckDB file on the same namespace: it
    rebuilds its read model from the stream alone. Yields its gRPC address; always stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    log_path = workdir / f"{instance}.log"
    child_env = {
        **env,
        "SLUICEWAY_NATS_URL": nats_url,
        "SLUICEWAY_TRACKER_DB": str(workdir / f"{instance}.duckdb"),
        "SLUICEWAY_TRACKER_ADDR": "127.0.0.1:0",
        "SLUICEWAY_READY_FILE": str(ready),
        "SLUICEWAY_INSTANCE": instance,
        "PYTHONUNBUFFERED": "1",
    }
    child_env.pop("SLUICEWAY_CRASH_AT", None)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sluiceway.tracker"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        addr = ""
        while not addr:
            if popen.poll() is not None:
                raise AssertionError(
                    f"{instance} exited with {popen.returncode}\n{log_tail(log_path)}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError):
                addr = str(json.loads(ready.read_text()).get("tracker_addr", ""))
            if not addr:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{instance} was not ready in {timeout_s:.0f}s")
                time.sleep(0.05)
        yield addr
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=5)


# ---- the stream, live ------------------------------------------------------------------------


class ChunkCompletions:
    """A core NATS subscription to the namespace's ChunkCompleted subjects: JetStream publishes
    reach plain subscribers too, so the harness learns that `count` chunks have completed
    within milliseconds (the tracker's read model lags by a batch), while others are in flight."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.seen = asyncio.Event()
        self._completed = 0
        self._nc: NATS | None = None

    async def start(self, url: str, names: Names, options: Mapping[str, Any]) -> None:
        self._nc = await nats.connect(
            server_urls(url), name="test-chunk-completions", allow_reconnect=False, **options
        )

        async def on_msg(msg: Msg) -> None:
            # <ns>.runs.<run_id>.<kind>[.<chunk>]: ChunkCompleted may carry a chunk token
            if msg.subject.split(".")[3:4] == ["chunk_completed"]:
                self._completed += 1
                if self._completed >= self.count:
                    self.seen.set()

        await self._nc.subscribe(names.runs_all, cb=on_msg)
        await self._nc.flush()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()


# ---- the Tracker API --------------------------------------------------------------------------


async def terminal_run(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str
) -> tracker_pb2.RunSummary | None:
    """The run's summary once it is terminal; None while it runs or the tracker is unreachable
    (it may be the process that just crashed)."""
    try:
        run = await stub.GetRun(tracker_pb2.GetRunRequest(run_id=run_id), timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            return None
        raise
    return run if run.status in TERMINAL else None


async def caught_up_run(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str, min_seq: int
) -> tracker_pb2.RunSummary | None:
    """GetRun with read-your-writes: None while the projection is behind `min_seq`."""
    try:
        return await stub.GetRun(
            tracker_pb2.GetRunRequest(run_id=run_id, min_seq=min_seq), timeout=5
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            return None
        raise


async def log_history(bus: Bus, archive_dir: Path, run_id: str) -> list[tuple[int, RunEvent]]:
    """Every event of one run in the whole log: what retention archived (segments under
    `archive_dir`), then what the run stream still holds; each sequence once."""
    archive = Archive(str(archive_dir), bus.names.namespace)
    prefix = f"{bus.names.namespace}.runs.{run_id}."
    found: dict[int, RunEvent] = {}
    reached = 0
    for segment in archive.after(0):
        batch = archive.read(segment, reached)
        for m in batch:
            if m.subject.startswith(prefix):
                found[m.seq] = codec.decode(m.data, subject=m.subject)
        reached = batch[-1].seq if batch else reached
    for seq, event in await bus.history(run_id):
        found[seq] = event
    return sorted(found.items())


async def all_run_events(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str
) -> list[tracker_pb2.StoredEvent]:
    out: list[tracker_pb2.StoredEvent] = []
    after = 0
    for _ in range(1000):
        page = await stub.GetRunEvents(
            tracker_pb2.GetRunEventsRequest(run_id=run_id, after_seq=after, page_size=1000),
            timeout=10,
        )
        out.extend(page.events)
        if not page.next_after_seq:
            return out
        after = page.next_after_seq
    raise AssertionError("GetRunEvents never ended")


@dataclass
class ReadModel:
    """Everything one tracker answers about one run."""

    run: tracker_pb2.RunSummary
    chunks: tracker_pb2.ListChunksResponse
    parts: tracker_pb2.ListPartsResponse
    events: list[tracker_pb2.StoredEvent]


async def read_model(
    addr: str, run_id: str, min_seq: int, timeout_s: float, token: str = ""
) -> ReadModel:
    """The tracker's answers once its projection has applied `min_seq` (asked with `token`)."""
    channel = grpc.aio.insecure_channel(addr, interceptors=bearer_interceptors(token))
    try:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        run = await eventually(
            lambda: caught_up_run(stub, run_id, min_seq),
            timeout_s=timeout_s,
            interval_s=0.1,
            what=f"tracker {addr} applied seq {min_seq}",
        )
        chunks = await stub.ListChunks(tracker_pb2.ListChunksRequest(run_id=run_id), timeout=10)
        parts = await stub.ListParts(tracker_pb2.ListPartsRequest(run_id=run_id), timeout=10)
        events = await all_run_events(stub, run_id)
        return ReadModel(run, chunks, parts, events)
    finally:
        await channel.close()


def _pg_config(
    name: str, table: str, dest: Path, url_env: str, chunking: str, engine: str = "postgres"
) -> str:
    """One chunked Parquet export of `public.<table>` from the PostgreSQL source whose URL is
    in `url_env` (of `<table>` in the database of a `mysql` source); `chunking` holds its
    indented chunking lines."""
    relation = f"public.{table}" if engine == "postgres" else table
    return f"""
sources:
  src: {{engine: {engine}, url_env: {url_env}}}
exports:
  - name: {name}
    source: src
    table: {relation}
    mode: chunked
{chunking}    format: parquet
    destination: {dest}
"""


def chunked_pg_config(
    name: str, table: str, chunk_size: int, dest: Path, url_env: str, engine: str = "postgres"
) -> str:
    """A config of one chunked Parquet export of `public.<table>` in key ranges of `id`."""
    chunking = f"    chunk_column: id\n    chunk_size: {chunk_size}\n"
    return _pg_config(name, table, dest, url_env, chunking, engine)


def pages_pg_config(
    name: str, table: str, chunk_count: int, dest: Path, url_env: str, batch_rows: int
) -> str:
    """A config of one `chunk_by: pages` Parquet export of `public.<table>` (consistent_snapshot
    by default) in `chunk_count` page ranges, read and written `batch_rows` rows at a time: every
    batch is a row group of its own, so a worker killed after its first one leaves a torn part
    on disk with the rest of its range unread."""
    chunking = (
        f"    chunk_by: pages\n    chunk_count: {chunk_count}\n"
        f"    batch_size: {batch_rows}\n    row_group_rows: {batch_rows}\n"
    )
    return _pg_config(name, table, dest, url_env, chunking)
