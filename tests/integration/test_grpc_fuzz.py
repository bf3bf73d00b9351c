"""Every field of every Tracker and Control request, fuzzed over real gRPC: a documented code,
never UNKNOWN/INTERNAL, never a hang, and the server still serves afterwards.

The servers run on their own event loop in a background thread (real nats-server, the real
planner `serve`, the tracker's real projection, servicer and DuckDB file, grpc.aio on 127.0.0.1
port 0); the test drives them with a real synchronous gRPC client and a deadline on every call,
so each property can also check afterwards that every kind of answer was seen.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import sqlite3
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluiceway.common import bus as busmod
from sluiceway.common import codec
from sluiceway.common.authn import Audit, Authenticator, AuthInterceptor
from sluiceway.common.config import ConfigError, check_spec, load_text, select
from sluiceway.common.domain.events import ExportSpec, FileWritten, PlanResolved
from sluiceway.common.domain.ids import RUN_ID_RE
from sluiceway.common.localnats import LocalNats
from sluiceway.common.settings import Settings
from sluiceway.planner.adapters.servicer import MAX_CONFIG_BYTES, request_problem
from sluiceway.planner.main import serve as serve_planner
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.adapters.servicer import (
    TrackerServicer,
    decode_page_token,
    encode_page_token,
)
from sluiceway.tracker.app import Db, Projection
from sluiceway.v1 import control_pb2 as cpb
from sluiceway.v1 import control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.unit.histories import History
from tests.unit.test_config_fuzz import YAML_BITS, mutated_documents

pytestmark = pytest.mark.integration

T = TypeVar("T")
Code = grpc.StatusCode
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT_S = 10.0
REFUSED_PG_URL = "postgresql://fuzz:pw@127.0.0.1:1/none"  # port 1: connection refused at once


class LoopThread:
    """An asyncio loop on a daemon thread: the servers live there, the test talks to them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return self.submit(coro).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _wait_for(probe: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout_s}s")
        time.sleep(0.05)


def _rpc(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, Any, str]:
    """(code, response, details) of one unary call with a deadline."""
    try:
        return Code.OK, call(request, timeout=CALL_TIMEOUT_S), ""
    except grpc.RpcError as err:
        return err.code(), None, err.details() or ""


def _stream(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, list[Any], str]:
    items: list[Any] = []
    try:
        for item in call(request, timeout=CALL_TIMEOUT_S):
            items.append(item)
    except grpc.RpcError as err:
        return err.code(), items, err.details() or ""
    return Code.OK, items, ""


def _serving(channel: grpc.Channel, service: str) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
    )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# ---- shared strategies ------------------------------------------------------------------------

no_surrogates = st.characters(exclude_categories=["Cs"])  # protobuf strings are UTF-8
texts = st.text(no_surrogates, max_size=40)
ODD_IDS = [
    "",
    "*",
    ">",
    ".",
    "a.b",
    "run.>",
    "runs.*",
    "a*",
    " ",
    "\x00",
    "é",
    "😀",
    "-",
    "_" * 64,
    "_" * 65,
    "x" * 10_000,
    "a/b",
    "a\nb",
]
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-1, 0, 1, 2, 2**31 - 1]))
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 0, 1, 10, 2**63 - 1]))
uint64s = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 40), st.sampled_from([2**63]))


def _valid_id(run_id: str) -> bool:
    return RUN_ID_RE.fullmatch(run_id) is not None


def _names(details: str, *fields: str) -> bool:
    return any(f in details for f in fields)


# ---- the tracker --------------------------------------------------------------------------------


@dataclass
class TrackerEnv:
    stub: tracker_pb2_grpc.TrackerStub
    channel: grpc.Channel
    applied_seq: int
    events: dict[str, int]  # run id -> number of events
    chunks: dict[str, int]
    parts: dict[str, int]


def _histories() -> list[History]:
    done = History("run-done").planned(2).chunk_done(0).chunk_done(1).committed()
    retried = History("run_retried").planned(1).chunk_retried(0).committed()
    failed = History("run-failed").planned(2).chunk_failed(0).failed()
    canceled = History("run-canceled").planned(1).canceled()
    live = History("run-live").planned(2).chunk_done(0)
    return [done, retried, failed, canceled, live]


@dataclass
class _Tracker:
    nc: Any
    db: Db
    server: grpc.aio.Server
    projection_task: asyncio.Task[None]
    port: int
    applied: Callable[[], int]


async def _start_tracker(nats_url: str, namespace: str, db_path: Path) -> _Tracker:
    nc = await busmod.connect(nats_url, name="fuzz-tracker", connect_timeout_s=10)
    bus = busmod.Bus(nc, busmod.Names(namespace))
    await bus.ensure_streams()
    last = 0
    for history in _histories():
        for event in history.events:
            last = (await bus.append(event)).seq
    store = await asyncio.to_thread(TrackerStore, db_path)
    db = Db(store)
    projection = Projection(bus, db, batch_wait_s=0.05)
    await projection.start()
    task = asyncio.create_task(projection.run())
    # as in tracker.main (authentication off: the fuzzed requests are authenticated ones)
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(None), Audit())])
    # as in tracker.main, but a watch of an unknown run gives up after 5 ms instead of 5 s
    servicer = TrackerServicer(db, projection, watch_wait_for_run_s=0.005)
    tracker_pb2_grpc.add_TrackerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    deadline = asyncio.get_running_loop().time() + 20
    while projection.applied_seq < last:
        assert asyncio.get_running_loop().time() < deadline, "the projection did not catch up"
        await asyncio.sleep(0.05)
    return _Tracker(nc, db, server, task, port, lambda: projection.applied_seq)


async def _stop_tracker(t: _Tracker) -> None:
    await t.server.stop(1)
    t.projection_task.cancel()
    try:
        await t.projection_task
    except asyncio.CancelledError:
        pass
    await t.nc.drain()
    await t.db.close()


@pytest.fixture
def tracker(nats_server: LocalNats, namespace: str, tmp_path: Path) -> Iterator[TrackerEnv]:
    loop = LoopThread()
    started = loop.run(_start_tracker(nats_server.url, namespace, tmp_path / "t.duckdb"))
    channel = grpc.insecure_channel(f"127.0.0.1:{started.port}")
    histories = _histories()
    try:
        yield TrackerEnv(
            stub=tracker_pb2_grpc.TrackerStub(channel),
            channel=channel,
            applied_seq=started.applied(),
            events={h.run_id: len(h.events) for h in histories},
            chunks={
                h.run_id: sum(
                    len(e.body.chunks) for e in h.events if isinstance(e.body, PlanResolved)
                )
                for h in histories
            },
            parts={
                h.run_id: sum(isinstance(e.body, FileWritten) for e in h.events) for h in histories
            },
        )
    finally:
        channel.close()
        loop.run(_stop_tracker(started))
        loop.close()


KNOWN_IDS = [h.run_id for h in _histories()]
run_ids = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"),
    st.sampled_from(ODD_IDS),
    texts,
)
watch_ids = run_ids.filter(lambda r: r != "run-live")  # a live run is watched until it ends
timestamps = st.one_of(
    st.none(),
    st.builds(timestamp_pb2.Timestamp, seconds=int64s, nanos=int32s),
    st.datetimes(timezones=st.just(UTC)).map(
        lambda d: timestamp_pb2.Timestamp(seconds=int(d.timestamp()))
    ),
)
statuses = st.lists(st.one_of(st.sampled_from(events_pb2.RunStatus.values()), int32s), max_size=4)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


page_tokens = st.one_of(
    st.just(""),
    texts,
    st.text(string.ascii_letters + string.digits + "-_=", max_size=60),
    st.builds(
        encode_page_token,
        st.none() | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        texts,
    ),
    st.builds(
        lambda a, b: _b64(json.dumps([a, b]).encode()),
        st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), texts),
        st.one_of(texts, st.integers(), st.none()),
    ),
    st.sampled_from(
        [
            _b64(b"[" * 5000),
            _b64(b"[1e400, 'x']"),
            _b64(json.dumps([10**30, "r"]).encode()),
            _b64(json.dumps([-(10**30), "r"]).encode()),
            _b64(b"\xff\xfe"),
        ]
    ),
)


def _list_runs(
    export_name: str, sts: list[int], after: Any, before: Any, size: int, token: str
) -> Any:
    req = tracker_pb2.ListRunsRequest(
        export_name=export_name, statuses=sts, page_size=size, page_token=token
    )
    if after is not None:
        req.requested_after.CopyFrom(after)
    if before is not None:
        req.requested_before.CopyFrom(before)
    return req


tracker_calls = st.one_of(
    st.tuples(
        st.just("GetRun"),
        st.builds(tracker_pb2.GetRunRequest, run_id=run_ids, min_seq=uint64s),
    ),
    st.tuples(
        st.just("ListRuns"),
        st.builds(
            _list_runs,
            st.one_of(st.sampled_from(["orders", "", "%", "x" * 10_000]), texts),
            statuses,
            timestamps,
            timestamps,
            int32s,
            page_tokens,
        ),
    ),
    st.tuples(st.just("ListChunks"), st.builds(tracker_pb2.ListChunksRequest, run_id=run_ids)),
    st.tuples(st.just("ListParts"), st.builds(tracker_pb2.ListPartsRequest, run_id=run_ids)),
    st.tuples(
        st.just("GetRunEvents"),
        st.builds(
            tracker_pb2.GetRunEventsRequest, run_id=run_ids, after_seq=uint64s, page_size=int32s
        ),
    ),
    st.tuples(
        st.just("WatchRun"),
        st.builds(tracker_pb2.WatchRunRequest, run_id=watch_ids, from_seq=uint64s),
    ),
)


def _timestamp_ok(ts: Any) -> bool:
    try:
        ts.ToDatetime()
    except (ValueError, OverflowError):
        return False
    return True


def _token_ok(token: str) -> bool:
    try:
        decode_page_token(token)
    except ValueError:
        return False
    return True


def _check_tracker_call(env: TrackerEnv, method: str, req: Any) -> grpc.StatusCode:
    """Call once; assert the answer is the documented one for this request."""
    stub = env.stub
    if method == "WatchRun":
        code, items, details = _stream(stub.WatchRun, req)
    else:
        code, response, details = _rpc(getattr(stub, method), req)
    assert code not in (Code.UNKNOWN, Code.INTERNAL, Code.DEADLINE_EXCEEDED), (code, details)

    if method == "ListRuns":
        problems = [
            name
            for name, bad in (
                ("page_size", req.page_size < 0),
                ("statuses", any(s not in events_pb2.RunStatus.values() for s in req.statuses)),
                (
                    "requested_after",
                    req.HasField("requested_after") and not _timestamp_ok(req.requested_after),
                ),
                (
                    "requested_before",
                    req.HasField("requested_before") and not _timestamp_ok(req.requested_before),
                ),
                ("page_token", bool(req.page_token) and not _token_ok(req.page_token)),
            )
            if bad
        ]
        if problems:
            assert code is Code.INVALID_ARGUMENT and _names(details, *problems), (code, details)
            return code
        assert code is Code.OK, (code, details)
        assert len(response.runs) <= min(req.page_size or 50, 500)
        for run in response.runs:
            assert not req.export_name or run.export_name == req.export_name
            assert not req.statuses or run.status in req.statuses
        return code

    problems = [] if _valid_id(req.run_id) else ["run_id"]
    if method == "GetRunEvents" and req.page_size < 0:
        problems.append("page_size")
    if problems:
        assert code is Code.INVALID_ARGUMENT and _names(details, *problems), (code, details)
        return code
    if method == "GetRun" and req.min_seq > env.applied_seq:
        assert code is Code.UNAVAILABLE, (code, details)
        return code
    if req.run_id not in env.events:
        assert code is Code.NOT_FOUND, (code, details)
        return code
    assert code is Code.OK, (code, details)
    n = env.events[req.run_id]
    if method == "GetRun":
        assert response.run_id == req.run_id and len(response.journal) == n
    elif method == "ListChunks":
        assert len(response.chunks) == env.chunks[req.run_id]
    elif method == "ListParts":
        assert len(response.parts) == env.parts[req.run_id]
    else:
        events = response.events if method == "GetRunEvents" else items
        seqs = [e.seq for e in events]
        after = req.after_seq if method == "GetRunEvents" else req.from_seq
        assert seqs == sorted(set(seqs)) and all(s > after for s in seqs)
        assert all(e.event.run_id == req.run_id for e in events)
        if after == 0 and (method == "WatchRun" or req.page_size == 0 or req.page_size >= n):
            assert len(events) == n
    return code


def test_every_tracker_request_gets_a_documented_answer(tracker: TrackerEnv) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(tracker_calls)
    def check(call: tuple[str, Any]) -> None:
        method, request = call
        seen[f"{method} {_check_tracker_call(tracker, method, request).name}"] += 1

    started = time.monotonic()
    check()
    print(f"tracker fuzz: {sum(seen.values())} calls in {time.monotonic() - started:.1f}s", seen)
    # the fuzz reached every method and every kind of answer
    for method in ("GetRun", "ListRuns", "ListChunks", "ListParts", "GetRunEvents", "WatchRun"):
        assert seen[f"{method} OK"] and seen[f"{method} INVALID_ARGUMENT"], (method, seen)
    assert seen["GetRun NOT_FOUND"] and seen["GetRun UNAVAILABLE"] and seen["WatchRun NOT_FOUND"]
    # and the server still serves
    assert _serving(tracker.channel, "")
    assert (
        tracker.stub.GetRun(
            tracker_pb2.GetRunRequest(run_id="run-done"), timeout=CALL_TIMEOUT_S
        ).status
        == events_pb2.RUN_STATUS_SUCCEEDED
    )


# ---- the planner's Control API ----------------------------------------------------------------


@dataclass
class ControlEnv:
    stub: control_pb2_grpc.ControlStub
    channel: grpc.Channel
    shop: Path
    dest: Path
    base: Path
    submitted: list[str] = field(default_factory=list)


def _make_shop(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO orders VALUES (?, ?)", [(i, f"o{i}") for i in range(1, 26)])
    con.commit()
    con.close()
    return path


@pytest.fixture
def control(
    nats_server: LocalNats, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ControlEnv]:
    # the planner resolves url_env in its own environment: set, and pointing nowhere
    monkeypatch.setenv("FUZZ_PG_URL", REFUSED_PG_URL)
    monkeypatch.setenv("SHOP_URL", REFUSED_PG_URL)
    base = tmp_path / "base"
    base.mkdir()
    _make_shop(base / "demo.db")
    ready = tmp_path / "planner.ready"
    settings_ = Settings.from_env(
        {
            "SLUICEWAY_NATS_URL": nats_server.url,
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_CONTROL_ADDR": "127.0.0.1:0",
            "SLUICEWAY_READY_FILE": str(ready),
            "SLUICEWAY_INSTANCE": "planner-fuzz",
            "SLUICEWAY_AUTH": "off",  # requests past authentication; refused ones: test_auth.py
        }
    )
    loop = LoopThread()
    stop = asyncio.Event()
    task = loop.submit(serve_planner(settings_, stop))
    channel: grpc.Channel | None = None
    try:
        _wait_for(lambda: ready.exists() or task.done(), timeout_s=30, what="planner ready")
        if task.done():
            task.result()
        channel = grpc.insecure_channel(json.loads(ready.read_text())["control_addr"])
        yield ControlEnv(
            control_pb2_grpc.ControlStub(channel),
            channel,
            shop=_make_shop(tmp_path / "shop.db"),
            dest=tmp_path / "dest",
            base=base,
        )
    finally:
        if channel is not None:
            channel.close()
        loop.loop.call_soon_threadsafe(stop.set)
        task.result(30)
        loop.close()


# proto ExportSpec fields and random values for each; the base spec is valid
STRING_POOL = [
    "",
    "orders",
    "id",
    "name",
    "full",
    "chunked",
    "parquet",
    "csv",
    "zstd",
    "gzip",
    "none",
    "sqlite",
    "postgres",
    "FUZZ_PG_URL",
    "NOT_SET_ANYWHERE",
    "postgresql://u:secret@h/db",
    "SELECT id, name FROM orders",
    "SELECT 1",
    "main.orders",
    "orders; DROP TABLE orders",
    "*",
    ">",
    "a.b",
    "/abs/dir",
    "relative/dir",
    "\x00",
    "é✓😀\u2028",
    "x" * 70_000,
    "é" * 20_000,
    "a" * 200,
]
spec_strings = st.one_of(st.sampled_from(STRING_POOL), texts)
SPEC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": spec_strings,
    "table": spec_strings,
    "query": spec_strings,
    "mode": spec_strings,
    "chunk_column": spec_strings,
    "format": spec_strings,
    "compression": spec_strings,
    "destination": spec_strings,
    "chunk_size": int64s,
    "row_group_rows": int64s,
    "chunk_count": int32s,
    "compression_level": int32s,
    "batch_size": int32s,
    "max_attempts": int32s,
    "columns": st.lists(spec_strings, max_size=5)
    | st.just([f"c{i}_{'x' * 50}" for i in range(1500)]),
    "source.engine": spec_strings,
    "source.url_env": spec_strings,
    "source.path": spec_strings,
    "priority": int32s,
    "schedule.cron": st.one_of(
        st.sampled_from(["0 * * * *", "*/5 1-3 * * MON", "0 2 L * *"]), spec_strings
    ),
    "schedule.timezone": st.one_of(
        st.sampled_from(["", "UTC", "Europe/Paris", "Nope/Nope"]), spec_strings
    ),
    "schedule.catch_up": st.one_of(st.sampled_from(["", "all", "latest", "none"]), spec_strings),
    "schedule.overlap": st.one_of(st.sampled_from(["", "wait", "skip"]), spec_strings),
    "schedule.enabled": st.booleans(),
}


def _spec(env: ControlEnv, chunked: bool, changes: dict[str, Any]) -> Any:
    spec = events_pb2.ExportSpec(
        name="orders", table="orders", mode="full", destination=str(env.dest)
    )
    spec.source.engine, spec.source.path = "sqlite", str(env.shop)
    if chunked:
        spec.mode, spec.chunk_column, spec.chunk_size = "chunked", "id", 7
    for key, value in changes.items():
        target, _, name = key.rpartition(".")
        msg = {"source": spec.source, "schedule": spec.schedule}.get(target, spec)
        if name == "columns":
            del spec.columns[:]
            spec.columns.extend(value)
        else:
            setattr(msg, name, value)
    return spec


@st.composite
def exports(draw: st.DrawFn, env: ControlEnv) -> tuple[str, Any]:
    """('spec', ExportSpec) | ('config', ConfigDocument) | ('', None)."""
    kind = draw(st.sampled_from(["spec", "spec", "config", "config", ""]))
    if kind == "spec":
        fields = st.sampled_from(sorted(SPEC_FIELDS))
        changes = draw(
            st.one_of(
                st.just({}),
                st.dictionaries(fields, st.none(), max_size=1),
                st.dictionaries(fields, st.none(), max_size=3),
            )
        )
        values = {k: draw(SPEC_FIELDS[k]) for k in changes}
        return kind, _spec(env, draw(st.booleans()), values)
    if kind == "config":
        text = draw(
            st.one_of(
                mutated_documents().map(lambda c: yaml.safe_dump(c[0], allow_unicode=True)),
                st.lists(st.sampled_from(YAML_BITS) | texts, max_size=30).map("".join),
                st.just("#" * (MAX_CONFIG_BYTES + 1)),
            )
        )
        doc = cpb.ConfigDocument(
            text=text,
            export_name=draw(st.one_of(st.sampled_from(["", "e0", "e1", "e2", "x" * 5000]), texts)),
            base_dir=draw(st.one_of(st.just(str(env.base)), st.just(str(env.base)), spec_strings)),
            file_name=draw(st.one_of(st.sampled_from(["", "f.yaml", "f" * 20_000]), texts)),
        )
        return kind, doc
    return kind, None


def _with_export(req: Any, export: tuple[str, Any]) -> Any:
    kind, value = export
    if kind:
        getattr(req, kind).CopyFrom(value)
    return req


requested_bys = st.one_of(texts, texts, st.sampled_from(["", "ana", "x" * 257, "é" * 300]))
options = st.one_of(
    st.just({}),
    st.dictionaries(texts, texts, max_size=4),
    st.dictionaries(texts, texts, max_size=4),
    st.dictionaries(
        st.text(no_surrogates, max_size=300), st.text(no_surrogates, max_size=1100), max_size=40
    ),
    # each entry within its bounds, together too big for one event
    st.just({f"k{i}{'é' * 250}": "é" * 1024 for i in range(32)}),
)


@st.composite
def control_calls(draw: st.DrawFn, env: ControlEnv) -> tuple[str, Any]:
    method = draw(
        st.sampled_from(
            ["SubmitRun", "SubmitRun", "PlanRun", "CancelRun", "ApplySchedules", "ListSchedules"]
        )
    )
    if method == "SubmitRun":
        req = cpb.SubmitRunRequest(
            requested_by=draw(requested_bys),
            options=draw(options),
            priority=draw(st.one_of(st.sampled_from([0, 1, 2, 3]), int32s)),
        )
        return method, _with_export(req, draw(exports(env)))
    if method == "ApplySchedules":
        specs = []
        for _ in range(draw(st.integers(0, 3))):
            kind, value = draw(exports(env))
            if kind == "spec":
                specs.append(value)
        return method, cpb.ApplySchedulesRequest(specs=specs, applied_by=draw(requested_bys))
    if method == "ListSchedules":
        return method, cpb.ListSchedulesRequest(
            upcoming=draw(st.one_of(st.integers(0, 60), int32s))
        )
    if method == "PlanRun":
        return method, _with_export(cpb.PlanRunRequest(), draw(exports(env)))
    # a submitted run is picked by index when the call is made: strategies stay independent
    # of what earlier examples submitted
    return method, (
        draw(st.one_of(st.integers(0, 1000), st.integers(0, 1000), run_ids)),
        draw(st.one_of(texts, st.just("r" * 1025))),
        draw(requested_bys),
    )


def _cancel_request(env: ControlEnv, pick: int | str, reason: str, by: str) -> Any:
    if isinstance(pick, int):
        pick = env.submitted[pick % len(env.submitted)] if env.submitted else "no-run-yet"
    return cpb.CancelRunRequest(run_id=pick, reason=reason, requested_by=by)


def _local_check(kind: str, value: Any) -> ConfigError | ExportSpec:
    """What the planner's validation says, run here against the same environment."""
    try:
        if kind == "spec":
            return check_spec(codec.from_message(value, ExportSpec), env=os.environ)
        name = value.file_name or "<config>"
        specs = load_text(
            value.text, base_dir=value.base_dir or ".", file_name=name, env=os.environ
        )
        return select(specs, value.export_name or None, file_name=name)
    except ConfigError as exc:
        return exc


def _check_control_call(env: ControlEnv, method: str, req: Any) -> grpc.StatusCode:
    code, response, details = _rpc(getattr(env.stub, method), req)
    assert code not in (Code.UNKNOWN, Code.INTERNAL, Code.DEADLINE_EXCEEDED), (code, details)
    assert len(details) <= 1024

    if method == "CancelRun":
        if not req.run_id:
            assert code is Code.INVALID_ARGUMENT and "run_id" in details
        elif problem := request_problem(req):
            field_ = problem.split(":")[0]
            assert code is Code.INVALID_ARGUMENT and details.startswith(field_), (code, details)
        elif not _valid_id(req.run_id):
            assert code is Code.INVALID_ARGUMENT and "run_id" in details, (code, details)
        elif req.run_id in env.submitted:
            if code is Code.FAILED_PRECONDITION:  # it has ended (or was canceled before)
                assert "already ended" in details, details
            else:
                assert code is Code.OK and response.run_id == req.run_id, (code, details)
        else:
            assert code is Code.NOT_FOUND, (code, details)
        return code

    if method == "ListSchedules":
        if 0 <= req.upcoming <= 50:
            assert code is Code.OK and all(
                len(i.next) <= (req.upcoming or 3) for i in response.schedules
            )
        else:
            assert code is Code.INVALID_ARGUMENT and details.startswith("upcoming"), details
        return code
    if method == "ApplySchedules":
        checked = [_local_check("spec", spec) for spec in req.specs]
        bad = [i for i, c in enumerate(checked) if isinstance(c, ConfigError)]
        if len(req.applied_by) > 256:
            assert code is Code.INVALID_ARGUMENT and details.startswith("applied_by"), details
        elif bad:
            assert code is Code.INVALID_ARGUMENT, (code, details)
            assert details.startswith(f"specs[{bad[0]}]"), details
        elif len({c.name for c in checked if isinstance(c, ExportSpec)}) != len(checked):
            assert code is Code.INVALID_ARGUMENT and "named twice" in details, details
        else:
            assert code is Code.OK, (code, details)
            assert len(response.schedules) <= len(req.specs)
        return code
    if method == "SubmitRun" and (problem := request_problem(req)):
        field_ = problem.split(":")[0].split("[")[0]
        assert code is Code.INVALID_ARGUMENT and details.startswith(field_), (code, details)
        return code
    if method == "SubmitRun" and req.priority not in (0, 1, 2, 3):
        assert code is Code.INVALID_ARGUMENT and details.startswith("priority"), (code, details)
        return code
    kind = req.WhichOneof("export")
    if kind is None:
        assert code is Code.INVALID_ARGUMENT and details.startswith("export"), (code, details)
        return code
    local = _local_check(kind, getattr(req, kind))
    if isinstance(local, ConfigError):
        assert code is Code.INVALID_ARGUMENT, (code, details, str(local))
        if local.field:  # the field inside the export, and the export
            assert f"field {local.field!r}"[:40] in details, (details, local.field)
        else:  # a problem with the document as a whole: the request field is named
            assert details.startswith(f"{kind}: "), details
        return code
    if method == "PlanRun":
        assert code in (Code.OK, Code.FAILED_PRECONDITION, Code.UNAVAILABLE), (code, details)
        if code is Code.OK:
            assert response.spec.name == local.name and len(response.plan.chunks) >= 1
        return code
    if code is Code.INVALID_ARGUMENT:  # a valid export whose request is too big for one event
        assert "-byte event" in details and details.split(":")[0] in ("options", kind), details
        return code
    assert code is Code.OK, (code, details)
    assert _valid_id(response.run_id) and response.stream_seq > 0
    assert response.export_name == local.name
    env.submitted.append(response.run_id)
    return code


def test_every_control_request_gets_a_documented_answer(control: ControlEnv) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(st.data())
    def check(data: st.DataObject) -> None:
        method, request = data.draw(control_calls(control))
        if method == "CancelRun":
            request = _cancel_request(control, *request)
        seen[f"{method} {_check_control_call(control, method, request).name}"] += 1

    started = time.monotonic()
    check()
    print(f"control fuzz: {sum(seen.values())} calls in {time.monotonic() - started:.1f}s", seen)
    for answer in (
        "SubmitRun OK",
        "SubmitRun INVALID_ARGUMENT",
        "PlanRun OK",
        "PlanRun INVALID_ARGUMENT",
        "CancelRun OK",
        "CancelRun NOT_FOUND",
        "CancelRun INVALID_ARGUMENT",
        "ApplySchedules OK",
        "ApplySchedules INVALID_ARGUMENT",
        "ListSchedules OK",
        "ListSchedules INVALID_ARGUMENT",
    ):
        assert seen[answer], (answer, seen)
    # the planner still serves: health, and a valid submission
    assert _serving(control.channel, "sluiceway.v1.Control")
    reply = control.stub.SubmitRun(
        cpb.SubmitRunRequest(spec=_spec(control, True, {})), timeout=CALL_TIMEOUT_S
    )
    assert _valid_id(reply.run_id) and reply.export_name == "orders"
