"""`make bench-control`: the control plane measured at a realistic history, as JSON.

Synthesizes BENCH_CONTROL_RUNS runs (100,000 by default, about 51 events each: over 5 million
events) with the event mix of chunked runs — most succeed, some retry a chunk, fail one for
good, are canceled partway, or were scheduled — straight onto a local nats-server's run stream
(the real stream configuration, core publishes, the count checked against the stream after).
Every template is folded with the domain's `evolve` first and must end in its status with no
anomaly, so the history is one the services could have written. Then, against real processes:

- `rebuild`: a tracker started on an empty DuckDB file catches up on the whole stream (the
  projection a new replica or `rebuild-tracker` runs): events/s, the time to the first million
  events and to all of them, the tracker's peak RSS and CPU-seconds and nats-server's;
- `reads`: GetRun, ListRuns (first page and the 50th, 50 runs a page), ListChunks of ended
  runs, p50/p99 over the tracker's gRPC API with authentication on;
- `live`: 20 runs in flight, each followed by a WatchRun client while their chunks' events are
  appended: append-to-client latency p50/p99 (the event's `occurred_at` is its append time);
  then a burst of BENCH_CONTROL_BURST events from 500 new runs appended as fast as possible:
  the live projection rate;
- `planner_start`: a planner started on that history (its request consumer already caught up,
  as a planner that ran all along), twice: the first start, with no snapshot of the open runs
  yet, reads its scheduler feed from sequence 1; the restart begins at the snapshot the first
  one stored. For each: time to ready, until nothing is pending for its feed's consumer on
  NATS, the messages that feed read, its peak RSS. The target is the restart's;
- `stream`: bytes on disk per run and per event;
- `retention`: the tracker archives and purges every run that ended before the window (all
  of the synthetic history but the runs left open): the events purged, how fast, the archive's
  bytes per event; then a new replica on an empty file catches up from the archive and the
  stream (events/s).

Each figure stands beside its target; `saturates` says, for a missed one, what was busy.
Everything runs on this machine: the tracker, nats-server and this client share its cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import psutil

from bench.run import RssSampler
from sluiceway.cli import stack as stackmod
from sluiceway.client import AsyncClient, ClientOptions
from sluiceway.client.options import with_token
from sluiceway.common import bus as busmod
from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import RunState, evolve
from sluiceway.common.localnats import LocalNats
from sluiceway.planner.scheduler import feed_subjects
from sluiceway.v1 import events_pb2 as pb

RUNS = int(os.environ.get("BENCH_CONTROL_RUNS", "100000"))
BURST = int(os.environ.get("BENCH_CONTROL_BURST", "100000"))
SAMPLES = int(os.environ.get("BENCH_CONTROL_SAMPLES", "1000"))
LIVE_RUNS = 20
LIVE_EVENTS_PER_S = 200
LIVE_SECONDS = 10.0
EXPORTS = 500
PAGE = 50
TARGETS = {
    "projection_events_per_s_min": 50_000,
    "rebuild_1m_s_max": 20.0,
    "get_run_p99_ms_max": 5.0,
    "list_runs_page_p99_ms_max": 20.0,
    "watch_run_p99_ms_max": 100.0,
    "planner_start_s_max": 2.0,
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NS = "sluiceway"
NAMES = busmod.Names(NS)


def log(msg: str) -> None:
    print(f"[bench-control] {msg}", file=sys.stderr, flush=True)


# ---- the history: templates of real run shapes, folded before use --------------------------


def _spec(export: str) -> ev.ExportSpec:
    return ev.ExportSpec(
        name=export,
        source=ev.SourceSpec(engine="postgres", url_env="SHOP_URL"),
        table=f"public.{export}",
        mode="chunked",
        chunk_column="id",
        chunk_size=100_000,
        format="parquet",
        compression="zstd",
        destination="/data/out",
        batch_size=65_536,
        max_attempts=3,
    )


def _chunk_ok(i: int, attempt: int = 1) -> list[ev.Body]:
    return [
        ev.ChunkStarted(chunk_index=i, attempt=attempt),
        ev.FileWritten(
            file_name=f"part-{i:05d}-0000-a{attempt}.parquet",
            rows=100_000,
            bytes=4_000_000,
            chunk_index=i,
            attempt=attempt,
            content_fingerprint="xxh3:0123456789abcdef",
        ),
        ev.ChunkCompleted(
            chunk_index=i,
            rows=100_000,
            files=1,
            attempt=attempt,
            source_rows=100_000,
            source_counted=True,
        ),
    ]


def template(kind: str, chunks: int) -> tuple[list[ev.Body], ev.RunStatus]:
    """The bodies of one run of `kind` with `chunks` chunks, and the status it ends in."""
    plan = ev.PlanResolved(
        plan_id="p",
        strategy="chunked",
        chunks=tuple(
            ev.ChunkRange(index=i, start_key=str(i * 100_000), end_key=str((i + 1) * 100_000))
            for i in range(chunks)
        ),
        format="parquet",
        compression="zstd",
        row_estimate=chunks * 100_000,
    )
    head: list[ev.Body] = [ev.RunRequested(spec=ev.ExportSpec(), requested_by="bench"), plan]
    if kind == "scheduled":
        at = T0
        head = [
            ev.RunScheduled(scheduled_at=at, cron="0 * * * *", timezone="UTC"),
            ev.RunReady(reason="due"),
            *head,
        ]
    body = list(head)
    rows = chunks * 100_000
    commit: list[ev.Body] = [
        ev.ValidationResult(passed=True),
        ev.ReconciliationResult(source_count=rows, exported_rows=rows, matched=True),
        ev.ManifestCommitted(manifest_uri="file:///m.json", row_count=rows, part_count=chunks),
        ev.RunCompleted(status=ev.RunStatus.SUCCEEDED, duration_ms=60_000),
    ]
    if kind in ("ok", "scheduled"):
        for i in range(chunks):
            body += _chunk_ok(i)
        return body + commit, ev.RunStatus.SUCCEEDED
    if kind == "retried":
        for i in range(chunks):
            if i % 7 == 0:
                body += [
                    ev.ChunkStarted(chunk_index=i, attempt=1),
                    ev.ChunkFailed(
                        chunk_index=i, attempt=1, error="connection reset", retryable=True
                    ),
                    ev.RetryAttempted(chunk_index=i, attempt=2, backoff_ms=1000),
                    *_chunk_ok(i, attempt=2),
                ]
            else:
                body += _chunk_ok(i)
        return body + commit, ev.RunStatus.SUCCEEDED
    if kind == "failed":
        for i in range(chunks - 1):
            body += _chunk_ok(i)
        last = chunks - 1
        body += [
            ev.ChunkStarted(chunk_index=last, attempt=1),
            ev.ChunkFailed(chunk_index=last, attempt=1, error="no such table", retryable=False),
            ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="chunk failed"),
        ]
        return body, ev.RunStatus.FAILED
    if kind == "canceled":
        for i in range(chunks // 2):
            body += _chunk_ok(i)
        body += [
            ev.CancelRequested(reason="bench"),
            ev.RunCompleted(status=ev.RunStatus.CANCELED),
        ]
        return body, ev.RunStatus.CANCELED
    raise ValueError(kind)


KINDS = (("ok", 75), ("retried", 10), ("failed", 7), ("canceled", 4), ("scheduled", 4))
CHUNKS = range(9, 24)  # 16 on average: about 52 events a run, with the mix


@dataclass(frozen=True)
class Template:
    """One run shape as protobuf envelopes, checked by folding."""

    kind: str
    messages: tuple[tuple[str, pb.RunEvent], ...]  # (kind token of the subject, envelope)


def _event(
    run_id: str, export: str, i: int, body: ev.Body, at: datetime | None = None
) -> ev.RunEvent:
    """The `i`th event of a run, at `at` (T0 + i seconds by default)."""
    if isinstance(body, ev.RunRequested):
        body = ev.RunRequested(spec=_spec(export), requested_by="bench")
    return ev.RunEvent(
        event_id=f"{run_id}.{i}",
        run_id=run_id,
        export_name=export,
        occurred_at=at or T0 + timedelta(seconds=i),
        body=body,
    )


def templates() -> dict[str, list[Template]]:
    """Every template, by kind."""
    out: dict[str, list[Template]] = {}
    for kind, _ in KINDS:
        for n in CHUNKS:
            bodies, status = template(kind, n)
            events = [_event("t", "x", i, b) for i, b in enumerate(bodies)]
            state = RunState(run_id="t")
            for e in events:
                evolve(state, e)
            if state.status is not status or state.anomalies:
                raise RuntimeError(
                    f"template {kind}/{n} folds to {state.status} with {len(state.anomalies)} "
                    f"anomalies: {[a.reason for a in state.anomalies][:3]}"
                )
            msgs = []
            for e in events:
                suffix = NAMES.event_subject(e).split(".", 3)[3]  # kind[.chunk | .export]
                msgs.append((suffix, codec.event_to_pb(e)))
            out.setdefault(kind, []).append(Template(kind, tuple(msgs)))
    return out


def run_messages(
    tpl: Template, run_id: str, export: str, start: datetime
) -> Iterator[tuple[str, bytes]]:
    """(subject, bytes) of one run: the template with this run's ids, export and times."""
    token = busmod.export_token(export)
    for i, (suffix, msg) in enumerate(tpl.messages):
        msg.run_id = run_id
        msg.event_id = f"{run_id}.{i}"
        msg.export_name = export
        msg.occurred_at.FromDatetime(start + timedelta(seconds=i))
        which = msg.WhichOneof("body")
        if which == "run_requested":
            msg.run_requested.spec.name = export
            msg.run_requested.spec.table = f"public.{export}"
        if which in ("manifest_committed", "run_scheduled"):
            suffix = f"{suffix.split('.', 1)[0]}.{token}"
        yield f"{NS}.runs.{run_id}.{suffix}", msg.SerializeToString()


def pick(rng: random.Random, tpls: dict[str, list[Template]]) -> Template:
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    return rng.choice(tpls[kind])


# ---- processes ---------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss / 1e6)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def spawn(service: str, work: Path, env: dict[str, str], timeout_s: float = 120.0) -> Service:
    """Start `python -m sluiceway.<service>` and wait for its ready file."""
    ready = work / "run" / f"{service}.json"
    ready.unlink(missing_ok=True)
    ready.parent.mkdir(parents=True, exist_ok=True)
    logf = open(work / "logs" / f"{service}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", f"sluiceway.{service}"],
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env={**env, "SLUICEWAY_READY_FILE": str(ready), "SLUICEWAY_INSTANCE": f"{service}-1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service} exited with {proc.returncode}: see {logf.name}")
        try:
            return Service(service, proc, json.loads(ready.read_text()))
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{service} not ready after {timeout_s:.0f} s: see {logf.name}")


def events_applied(tracker: Service) -> int:
    url = f"http://{tracker.ready['metrics_addr']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("sluiceway_events_total "):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3) if s else 0.0


def lat(values: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99), "n": len(values)}


# ---- phases ------------------------------------------------------------------------------------


async def publish(nc: Any, messages: Iterator[tuple[str, bytes]]) -> int:
    n = 0
    for subject, data in messages:
        await nc.publish(subject, data)
        n += 1
        if n % 20_000 == 0:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    return n


async def stream_state(bus: busmod.Bus) -> tuple[int, int]:
    info = await bus.js.stream_info(NAMES.runs_stream)
    return int(info.state.messages), int(info.state.bytes)


async def wait_stored(bus: busmod.Bus, expected: int, timeout_s: float = 120.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        stored, size = await stream_state(bus)
        if stored >= expected or time.monotonic() > deadline:
            if stored != expected:
                raise RuntimeError(f"the stream holds {stored} messages, {expected} were sent")
            return stored, size
        await asyncio.sleep(0.2)


async def synthesize(
    bus: busmod.Bus, runs: int, rng: random.Random, tpls: dict[str, list[Template]]
) -> dict[str, Any]:
    t0 = time.perf_counter()

    def history() -> Iterator[tuple[str, bytes]]:
        for r in range(runs):
            start = T0 + timedelta(seconds=60 * r)
            export = f"export_{rng.randrange(EXPORTS):03d}"
            yield from run_messages(pick(rng, tpls), f"h{r:07d}", export, start)

    sent = await publish(bus.nc, history())
    stored, size = await wait_stored(bus, sent)
    elapsed = time.perf_counter() - t0
    return {
        "runs": runs,
        "events": stored,
        "events_per_run": round(stored / runs, 1),
        "seconds": round(elapsed, 1),
        "stream_bytes": size,
    }


async def follow_rebuild(tracker: Service, total: int, nats: psutil.Process) -> dict[str, Any]:
    """Until the tracker has applied `total` events: the time to the first million and to all."""
    t0 = time.perf_counter()
    cpu0, ncpu0 = tracker.cpu_s(), nats.cpu_times()
    first_million = None
    deadline = t0 + 3600
    with RssSampler([("tracker", tracker.ps)]) as rss:
        while True:
            applied = await asyncio.to_thread(events_applied, tracker)
            now = time.perf_counter() - t0
            if first_million is None and applied >= min(1_000_000, total):
                first_million = now
            if applied >= total:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"rebuild stalled at {applied}/{total}")
            await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - t0
    ncpu = nats.cpu_times()
    return {
        "events": total,
        "seconds": round(elapsed, 2),
        "events_per_s": round(total / elapsed),
        "first_1m_s": round(first_million or elapsed, 2),
        "tracker_cpu_s": round(tracker.cpu_s() - cpu0, 2),
        "nats_cpu_s": round((ncpu.user + ncpu.system) - (ncpu0.user + ncpu0.system), 2),
        "tracker_peak_rss_mb": round(rss.peak.get("tracker", 0.0), 1),
    }


async def timed(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def reads(client: AsyncClient, runs: int, rng: random.Random) -> dict[str, Any]:
    ids = [f"h{rng.randrange(runs):07d}" for _ in range(SAMPLES)]
    it = iter(ids * 2)
    await client.get(ids[0])  # warm the channel
    get_run = await timed(lambda: client.get(next(it)), SAMPLES)
    first = await timed(lambda: client.list_runs(page_size=PAGE), SAMPLES // 5)
    token = ""
    for _ in range(49):
        token = (await client.list_runs(page_size=PAGE, page_token=token)).next_page_token
    fiftieth = await timed(lambda: client.list_runs(page_size=PAGE, page_token=token), SAMPLES // 5)
    it = iter(ids * 2)
    chunks = await timed(lambda: client.list_chunks(next(it)), SAMPLES)
    return {
        "get_run": lat(get_run),
        "list_runs_first_page": lat(first),
        "list_runs_page_50": lat(fiftieth),
        "list_chunks": lat(chunks),
    }


async def live(bus: busmod.Bus, client: AsyncClient, tracker: Service) -> dict[str, Any]:
    """20 runs in flight, each watched; their chunk events appended at LIVE_EVENTS_PER_S."""
    bodies, _ = template("ok", 50)
    now = datetime.now(UTC)
    runs = [f"live{i:02d}" for i in range(LIVE_RUNS)]
    head = 2  # requested, plan
    for r in runs:
        for i, body in enumerate(bodies[:head]):
            e = _event(r, "export_live", i, body, at=now)
            await bus.nc.publish(NAMES.event_subject(e), codec.encode(e))
    await bus.nc.flush()
    latencies: list[float] = []
    received = 0

    async def watch(run_id: str) -> None:
        nonlocal received
        async for stored in client.watch(run_id):
            if stored.event.WhichOneof("body") in ("run_requested", "plan_resolved"):
                continue
            sent = stored.event.occurred_at.ToDatetime(tzinfo=UTC)
            latencies.append((datetime.now(UTC) - sent).total_seconds() * 1000)
            received += 1
            if stored.kind == "completed":
                return

    watchers = [asyncio.create_task(watch(r)) for r in runs]
    await asyncio.sleep(1.0)  # every stream open and caught up
    rest = bodies[head:]
    per_run = min(len(rest), int(LIVE_EVENTS_PER_S * LIVE_SECONDS / LIVE_RUNS))
    # the last event of each run ends it (and its watcher)
    plan = [*rest[: per_run - 1], rest[-1]]
    interval = 1.0 / LIVE_EVENTS_PER_S
    next_at = time.perf_counter()
    sent = 0
    for i, body in enumerate(plan):
        for r in runs:
            e = _event(r, "export_live", head + i, body, at=datetime.now(UTC))
            await bus.nc.publish(NAMES.event_subject(e), codec.encode(e))
            sent += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    await bus.nc.flush()
    try:
        await asyncio.wait_for(asyncio.gather(*watchers), timeout=60)
    except TimeoutError:
        for w in watchers:
            w.cancel()
    return {"runs": LIVE_RUNS, "sent": sent, "received": received, **lat(latencies)}


async def burst(
    bus: busmod.Bus, tracker: Service, rng: random.Random, tpls: dict[str, list[Template]]
) -> dict[str, Any]:
    """BURST events of new runs appended as fast as possible while the tracker follows."""
    before = events_applied(tracker)
    start = datetime.now(UTC)

    def messages() -> Iterator[tuple[str, bytes]]:
        n = 0
        r = 0
        while n < BURST:
            for m in run_messages(rng.choice(tpls["ok"]), f"b{r:06d}", "export_burst", start):
                yield m
                n += 1
            r += 1

    t0 = time.perf_counter()
    cpu0 = tracker.cpu_s()
    sent = await publish(bus.nc, messages())
    publish_s = time.perf_counter() - t0
    deadline = time.monotonic() + 600
    while events_applied(tracker) < before + sent:
        if time.monotonic() > deadline:
            raise RuntimeError("the tracker did not apply the burst within 600 s")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    return {
        "events": sent,
        "publish_s": round(publish_s, 2),
        "seconds": round(elapsed, 2),
        "events_per_s": round(sent / elapsed),
        "tracker_cpu_s": round(tracker.cpu_s() - cpu0, 2),
    }


async def planner_start(bus: busmod.Bus, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """A planner on the whole history, its request consumer already caught up."""
    subjects = [NAMES.runs_of_kind("requested"), NAMES.runs_of_kind("cancel_requested")]
    await bus.ensure_run_consumer("planner-requests", subjects)
    sub = await bus.js.pull_subscribe_bind("planner-requests", stream=NAMES.runs_stream)
    acked = 0
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=2)
        except (TimeoutError, nats.errors.TimeoutError):
            break  # every request acked
        for m in msgs:
            await m.ack()
        acked += len(msgs)
    await sub.unsubscribe()
    first = await _start_planner(bus, work, env)
    # the first start stored a snapshot of the open runs; a restart begins there
    snapshot = await bus.scheduler_snapshot()
    restart = await _start_planner(bus, work, env)
    return {
        "history_events": await bus.stream_last_seq(),
        "requests_acked_before": acked,
        "first_start": first,
        "snapshot_seq": snapshot[0] if snapshot else None,
        "snapshot_bytes": len(snapshot[1]) if snapshot else None,
        "restart": restart,
    }


async def _start_planner(bus: busmod.Bus, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start a planner and follow its scheduler feed's consumer on NATS until nothing is
    pending for it: its time to ready and to caught up, the messages the feed read, its RSS.
    Stopped after its snapshot of the open runs covers the end of its feed."""
    feed = sorted(feed_subjects(NAMES))
    # a stopped planner's feed consumer lingers until its inactive threshold: not this one's
    earlier = {c.name for c in await bus.js.consumers_info(NAMES.runs_stream)}
    t0 = time.perf_counter()
    planner = spawn("planner", work, env)
    ready_s = time.perf_counter() - t0
    try:
        with RssSampler([("planner", planner.ps)]) as rss:
            caught_up, read = None, 0
            deadline = time.monotonic() + 900
            while caught_up is None and time.monotonic() < deadline:
                for c in await bus.js.consumers_info(NAMES.runs_stream):
                    if c.name in earlier or c.delivered is None:
                        continue
                    if sorted(c.config.filter_subjects or []) != feed:
                        continue
                    if not c.num_pending and c.delivered.consumer_seq is not None:
                        caught_up = time.perf_counter() - t0
                        read = c.delivered.consumer_seq
                await asyncio.sleep(0.05)
            rss_after = planner.rss_mb()
            position = 0
            for _ in range(200):  # the snapshot follows the first tick after the catch-up
                found = await bus.scheduler_snapshot()
                position = found[0] if found else 0
                if position and caught_up is not None:
                    break
                await asyncio.sleep(0.1)
        return {
            "ready_s": round(ready_s, 2),
            "feed_caught_up_s": round(caught_up, 2) if caught_up is not None else None,
            "feed_messages_read": read,
            "peak_rss_mb": round(rss.peak.get("planner", 0.0), 1),
            "rss_after_mb": round(rss_after, 1),
        }
    finally:
        planner.stop()


async def retention(
    bus: busmod.Bus, work: Path, env: dict[str, str], nats: psutil.Process
) -> dict[str, Any]:
    """Retention on the whole history: the tracker (its file at the stream's end) archives
    and purges every run that ended before the window, then a new replica on an empty file
    catches up from the archive and the stream."""
    archive = work / "archive"
    retained = {
        **env,
        "SLUICEWAY_ARCHIVE": str(archive),
        "SLUICEWAY_RUNS_MAX_AGE": "30d",  # every synthetic run ended in January
        "SLUICEWAY_ARCHIVE_INTERVAL_S": "1",
    }
    before = (await bus.js.stream_info(NAMES.runs_stream)).state
    t0 = time.perf_counter()
    tracker = spawn("tracker", work, retained)
    try:
        first, moved_at = before.first_seq, time.perf_counter()
        while time.perf_counter() - moved_at < 10.0:  # until a pass has nothing more to do
            now = (await bus.js.stream_info(NAMES.runs_stream)).state.first_seq
            if now != first:
                first, moved_at = now, time.perf_counter()
            await asyncio.sleep(0.2)
        archived_s = moved_at - t0
    finally:
        tracker.stop()
    after = (await bus.js.stream_info(NAMES.runs_stream)).state
    purged = after.first_seq - before.first_seq
    archive_bytes = sum(f.stat().st_size for f in archive.rglob("*.parquet"))
    replica_env = {**retained, "SLUICEWAY_TRACKER_DB": str(work / "replica.duckdb")}
    replica = spawn("tracker", work, replica_env)
    try:
        bootstrap = await follow_rebuild(replica, after.last_seq, nats)
    finally:
        replica.stop()
    return {
        "events_purged": purged,
        "archive_s": round(archived_s, 2),
        "archive_events_per_s": round(purged / archived_s) if archived_s > 0 else None,
        "archive_bytes_per_event": round(archive_bytes / purged, 1) if purged else None,
        "stream_events_left": after.messages,
        "stream_bytes_before": before.bytes,
        "stream_bytes_after": after.bytes,
        "replica_from_archive": bootstrap,
    }


# ---- the report ---------------------------------------------------------------------------------


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    rb, rd, lv, bu, ps = (
        report["rebuild"],
        report["reads"],
        report["live"],
        report["burst"],
        report["planner_start"],
    )
    restarted = ps["restart"]["feed_caught_up_s"]
    start = restarted if restarted is not None else float("inf")
    figures = {
        "projection_rebuild_events_per_s": (
            rb["events_per_s"],
            TARGETS["projection_events_per_s_min"],
            ">=",
        ),
        "projection_live_events_per_s": (
            bu["events_per_s"],
            TARGETS["projection_events_per_s_min"],
            ">=",
        ),
        "rebuild_1m_s": (rb["first_1m_s"], TARGETS["rebuild_1m_s_max"], "<="),
        "get_run_p99_ms": (rd["get_run"]["p99_ms"], TARGETS["get_run_p99_ms_max"], "<="),
        "list_runs_page_p99_ms": (
            max(rd["list_runs_first_page"]["p99_ms"], rd["list_runs_page_50"]["p99_ms"]),
            TARGETS["list_runs_page_p99_ms_max"],
            "<=",
        ),
        "watch_run_p99_ms": (lv["p99_ms"], TARGETS["watch_run_p99_ms_max"], "<="),
        "planner_start_s": (start, TARGETS["planner_start_s_max"], "<="),
    }
    out = {}
    for name, (value, target, op) in figures.items():
        met = value >= target if op == ">=" else value <= target
        out[name] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


def saturates(report: dict[str, Any]) -> dict[str, str]:
    """For the projection: which process was busy while it ran (CPU-seconds per wall second)."""
    rb = report["rebuild"]
    tracker = rb["tracker_cpu_s"] / rb["seconds"]
    nats = rb["nats_cpu_s"] / rb["seconds"]
    busiest = "tracker" if tracker >= nats else "nats-server"
    return {
        "projection": (
            f"{busiest}: tracker {tracker:.2f} CPU-s per second (one DuckDB thread and the fold "
            f"in one Python thread), nats-server {nats:.2f}"
        )
    }


async def main_async(work: Path) -> dict[str, Any]:
    rng = random.Random(7)
    for sub in ("run", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    nats = LocalNats(
        store_dir=work / "nats", log_file=work / "logs" / "nats-server.log", http_port=0
    )
    nats.start()
    log(f"nats-server {nats.url}, monitoring {nats.monitor_url}")
    assert nats.proc is not None
    nats_ps = psutil.Process(nats.proc.pid)
    state = stackmod.StackState(state_dir=str(work), nats_url=nats.url, started_at=time.time())
    auth_env = stackmod._local_auth(work, os.environ, state)
    token = Path(state.token_file).read_text().strip() if state.token_file else ""
    env = {
        **os.environ,
        **auth_env,
        "SLUICEWAY_NATS_URL": nats.url,
        "SLUICEWAY_NAMESPACE": NS,
        "SLUICEWAY_TRACKER_ADDR": "127.0.0.1:0",
        "SLUICEWAY_CONTROL_ADDR": "127.0.0.1:0",
        "SLUICEWAY_TRACKER_DB": str(work / "tracker.duckdb"),
        "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0",
        "PYTHONUNBUFFERED": "1",
    }
    tracker: Service | None = None
    nc = await busmod.connect(nats.url, name="bench-control")
    try:
        bus = busmod.Bus(nc, NAMES)
        await bus.ensure_streams()
        log(f"synthesizing {RUNS:,} runs")
        tpls = templates()
        history = await synthesize(bus, RUNS, rng, tpls)
        log(f"  {history['events']:,} events in {history['seconds']} s")
        log("rebuild: a tracker on an empty file catches up")
        tracker = spawn("tracker", work, env)
        rebuild = await follow_rebuild(tracker, history["events"], nats_ps)
        log(f"  {rebuild['events_per_s']:,} events/s, 1M in {rebuild['first_1m_s']} s")
        options = with_token(ClientOptions(), token) if token else ClientOptions()
        async with AsyncClient("", tracker.ready["tracker_addr"], options) as client:
            log("reads")
            read = await reads(client, RUNS, rng)
            log(f"  {json.dumps(read)}")
            log(f"live: {LIVE_RUNS} watched runs")
            watched = await live(bus, client, tracker)
            log(f"  {json.dumps(watched)}")
        log(f"burst: {BURST:,} events appended as fast as possible")
        burst_report = await burst(bus, tracker, rng, tpls)
        log(f"  {json.dumps(burst_report)}")
        tracker_rss = tracker.rss_mb()
        tracker.stop()
        tracker = None
        log("planner start on the whole history")
        planner = await planner_start(bus, work, env)
        log(f"  {json.dumps(planner)}")
        _, size = await stream_state(bus)
        events = await bus.stream_last_seq()
        log("retention: archive and purge the ended runs, then a replica from the archive")
        kept = await retention(bus, work, env, nats_ps)
        log(f"  {json.dumps(kept)}")
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
            "history": history,
            "rebuild": rebuild,
            "reads": read,
            "live": watched,
            "burst": burst_report,
            "planner_start": planner,
            "retention": kept,
            "tracker_rss_mb_after": round(tracker_rss, 1),
            "stream": {
                "bytes": size,
                "events": events,
                "bytes_per_event": round(size / events, 1),
                "bytes_per_run": round(size / (RUNS + LIVE_RUNS), 1),
            },
            "targets": TARGETS,
        }
        report["figures"] = verdicts(report)
        report["saturates"] = saturates(report)
        report["met"] = all(f["met"] for f in report["figures"].values())
        return report
    finally:
        if tracker is not None:
            tracker.stop()
        await nc.close()
        nats.stop()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sluiceway-bench-control-"))
    try:
        report = asyncio.run(main_async(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
