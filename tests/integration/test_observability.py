"""Traces, metrics, health and logs of real runs: a stack of service processes exports to a real
OTLP/gRPC receiver, serves /metrics over HTTP and grpc.health.v1, and writes JSON logs.

The checks look at what an operator's tools would see: the span tree of a run's trace (one
trace, one root, correct parents, sane timings, a dead attempt standing in its place), scraped
values that add up to the manifest, health that turns NOT_SERVING on shutdown, and log lines
that carry the run's trace id.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import crash, telemetry
from sluiceway.common.bus import Bus, Names, connect
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import chunked_pg_config, logs_tail, terminal_run, wait_sigkilled
from tests.support.localpg import LocalPostgres
from tests.support.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

TABLE = "otel_src"
ROWS = 40_000
CHUNK_SIZE = 10_000  # 4 chunks
CHUNKS = 4
URL_ENV = "OTEL_PG_URL"
# clock precision between processes on one machine: event times are microseconds, span
# times nanoseconds
SLACK_NS = 2_000_000


@pytest.fixture(scope="module")
def otel_source(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(
        f"DROP TABLE IF EXISTS {TABLE};"
        f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, label text, amount numeric(12,2));"
        f"INSERT INTO {TABLE} SELECT g, 'label ' || g, g / 7.0 "
        f"FROM generate_series(1, {ROWS}) g;"
    )
    pg.psql_admin(f"VACUUM ANALYZE {TABLE}")
    return pg


def _env(
    namespace: str, source: LocalPostgres, receiver: OtlpReceiver, *, ack_wait_s: str = ""
) -> dict[str, str]:
    """The stack's environment; `ack_wait_s` shortens the chunk tasks' ack_wait (a task whose
    worker died is handed out again after it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != crash.ENV}
    env.update(
        {
            "SLUICEWAY_NAMESPACE": namespace,
            URL_ENV: source.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0",
            "SLUICEWAY_HEALTH_ADDR": "127.0.0.1:0",
        }
    )
    if ack_wait_s:
        env["SLUICEWAY_WORKER_ACK_WAIT_S"] = ack_wait_s
        env["SLUICEWAY_WORKER_HEARTBEAT_S"] = "1"
    return env


def _ready(stack: Stack, instance: str) -> dict[str, str]:
    path = Path(stack.state.state_dir) / "run" / f"{instance}.json"
    return dict(json.loads(path.read_text()))


async def _submit(stack: Stack, dest: Path) -> str:
    async with stack.channel(stack.state.control_addr) as channel:
        submitted = await control_pb2_grpc.ControlStub(channel).SubmitRun(
            control_pb2.SubmitRunRequest(
                config=control_pb2.ConfigDocument(
                    text=chunked_pg_config("otel", TABLE, CHUNK_SIZE, dest, URL_ENV),
                    base_dir=str(dest.parent),
                    file_name="otel.yaml",
                ),
                requested_by="test_observability",
            ),
            timeout=30,
        )
    return submitted.run_id


async def _wait_terminal(stack: Stack, run_id: str) -> events_pb2.RunStatus.ValueType:
    async with stack.channel(stack.state.tracker_addr) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        try:
            run = await eventually(
                lambda: terminal_run(stub, run_id),
                timeout_s=90,
                what=f"run {run_id} ends",
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{logs_tail(Path(stack.state.state_dir))}") from None
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    return run.status


def _scrape(addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics endpoint, over HTTP."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# ---- the span tree --------------------------------------------------------------------------


def _check_tree(spans: list[ReceivedSpan], run_id: str) -> dict[str, ReceivedSpan]:
    """One trace, exactly one root (the run's derived ids), every other span's parent in the
    trace, children within their parents' time. Returns spans by id."""
    trace_id, root_id = (
        f"{i:0{w}x}" for i, w in zip(telemetry.run_trace_ids(run_id), (32, 16), strict=True)
    )
    assert {s.trace_id for s in spans} == {trace_id}
    by_id: dict[str, ReceivedSpan] = {}
    for s in spans:
        assert s.span_id not in by_id, (
            f"span id {s.span_id} twice: {s.name} / {by_id[s.span_id].name}"
        )
        by_id[s.span_id] = s
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [(s.name, s.service) for s in roots]
    root = roots[0]
    assert (root.name, root.span_id, root.service) == ("run", root_id, "sluiceway-committer")
    assert root.attr("sluiceway.run_id") == run_id
    assert root.attr("sluiceway.status") == "SUCCEEDED"
    for s in spans:
        assert s.span.end_time_unix_nano >= s.span.start_time_unix_nano, s.name
        if s is root:
            continue
        assert s.parent_id in by_id, f"{s.name} ({s.service}) has no parent in the trace"
        parent = by_id[s.parent_id].span
        assert s.span.start_time_unix_nano >= parent.start_time_unix_nano - SLACK_NS, (
            s.name,
            by_id[s.parent_id].name,
        )
        assert s.span.end_time_unix_nano <= parent.end_time_unix_nano + SLACK_NS, (
            s.name,
            by_id[s.parent_id].name,
        )
    return by_id


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def _whole_trace(receiver: OtlpReceiver, run_id: str, attempts: int) -> list[ReceivedSpan]:
    """The trace once its root, `attempts` chunk attempts and the commit have arrived."""
    trace_id = f"{telemetry.run_trace_ids(run_id)[0]:032x}"

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.of_trace(trace_id)
        names = [s.name for s in spans]
        if "run" in names and "commit run" in names and names.count("chunk attempt") >= attempts:
            return spans
        return None

    return await eventually(complete, timeout_s=30, what="the whole trace is received")


async def test_a_run_is_one_whole_trace_with_metrics_health_and_logs(
    otel_source: LocalPostgres,
    nats_server: LocalNats,
    namespace: str,
    tmp_path: Path,
    receiver: OtlpReceiver,
) -> None:
    dest = tmp_path / "dest"
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "state",
        workers=2,
        nats_url=nats_server.url,
        env=_env(namespace, otel_source, receiver),
    )
    try:
        # health: worker and committer answer SERVING once consuming
        for inst in ("worker-1", "worker-2", "committer-1"):
            async with grpc.aio.insecure_channel(_ready(stack, inst)["health_addr"]) as ch:
                reply = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, inst

        run_id = await _submit(stack, dest)
        await _wait_terminal(stack, run_id)
        manifest = json.loads((dest / "otel" / "runs" / run_id / "manifest.json").read_text())

        # ---- the trace
        spans = await _whole_trace(receiver, run_id, CHUNKS)
        by_id = _check_tree(spans, run_id)
        root_id = f"{telemetry.run_trace_ids(run_id)[1]:016x}"
        (requested,) = _named(spans, "run requested")
        (planned,) = _named(spans, "plan run")
        (commit,) = _named(spans, "commit run")
        assert requested.parent_id == planned.parent_id == commit.parent_id == root_id
        assert (requested.service, planned.service) == ("sluiceway-planner", "sluiceway-planner")
        # the gRPC server span of SubmitRun (instrumented grpc.aio server) is linked from the run
        (submit_rpc,) = [s for s in receiver.spans if s.name.endswith("Control/SubmitRun")]
        assert [link.span_id.hex() for link in requested.span.links] == [submit_rpc.span_id]
        # the plan links to its producer (RunRequested's span)
        assert [link.span_id.hex() for link in planned.span.links] == [requested.span_id]
        attempts = _named(spans, "chunk attempt")
        assert sorted(s.attr("sluiceway.chunk") for s in attempts) == list(range(CHUNKS))
        for a in attempts:
            assert a.parent_id == root_id and a.service == "sluiceway-worker"
            assert a.attr("sluiceway.outcome") == "completed" and not a.failed
            expected = telemetry.attempt_span_id(
                run_id, a.attr("sluiceway.chunk"), a.attr("sluiceway.attempt")
            )  # type: ignore[arg-type]
            assert a.span_id == f"{expected:016x}"
            # a task's consumer links to the plan that published it
            assert [link.span_id.hex() for link in a.span.links] == [planned.span_id]
        parts = _named(spans, "part written")
        assert sorted(p.attr("sluiceway.file") for p in parts) == sorted(
            Path(p["path"]).name for p in manifest["parts"]
        )
        assert all(by_id[p.parent_id].name == "chunk attempt" for p in parts)
        assert sum(p.attr("sluiceway.rows") for p in parts) == manifest["row_count"] == ROWS  # type: ignore[misc]
        for name in ("validate parts", "write manifest"):
            (gate,) = _named(spans, name)
            assert gate.parent_id == commit.span_id

        # ---- logs: a chunk attempt's lines carry the run's trace and the attempt's span
        trace_hex = f"{telemetry.run_trace_ids(run_id)[0]:032x}"
        attempt_ids = {a.span_id for a in attempts}
        lines = []
        for inst in ("worker-1", "worker-2"):
            log_file = Path(stack.state.state_dir) / "logs" / f"{inst}.log"
            for raw in log_file.read_text().splitlines():
                if raw.startswith("{") and "attempt" in raw:
                    lines.append(json.loads(raw))
        mine = [
            line for line in lines if line.get("run_id") == run_id and " attempt " in line["msg"]
        ]
        assert any(line["msg"].endswith("started") for line in mine), mine
        assert any("completed" in line["msg"] for line in mine), mine
        assert all(line["trace_id"] == trace_hex for line in mine), mine
        assert {line["span_id"] for line in mine} <= attempt_ids and mine

        # ---- metrics, scraped over HTTP
        scraped = {
            inst: await asyncio.to_thread(_scrape, _ready(stack, inst)["metrics_addr"])
            for inst in ("planner-1", "committer-1", "worker-1", "worker-2")
        }
        workers = [scraped["worker-1"], scraped["worker-2"]]
        assert sum(_value(w, "sluiceway_rows_exported_total") for w in workers) == ROWS
        assert sum(_value(w, "sluiceway_bytes_written_total") for w in workers) == sum(
            p["size_bytes"] for p in manifest["parts"]
        )
        assert (
            sum(
                _value(w, "sluiceway_chunk_duration_seconds_count", outcome="completed")
                for w in workers
            )
            == CHUNKS
        )
        runs = {
            svc: _value(scraped[svc], "sluiceway_runs_total", status="SUCCEEDED")
            for svc in ("planner-1", "committer-1")
        }
        assert runs == {"planner-1": 0.0, "committer-1": 1.0}
        assert _value(scraped["committer-1"], "sluiceway_runs_total", status="FAILED") == 0.0
        for inst, consumer in (
            ("planner-1", "planner-requests"),
            ("committer-1", "committer-runs"),
            ("worker-1", "worker-chunks"),
        ):
            assert _value(scraped[inst], "sluiceway_consumer_lag", consumer=consumer) == 0.0

        nc = await connect(nats_server.url, name="test-observability", connect_timeout_s=10)
        try:
            last_seq = await Bus(nc, Names(namespace)).stream_last_seq()
        finally:
            await nc.drain()
        tracker_metrics = _ready(stack, "tracker-1")["metrics_addr"]

        async def caught_up() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            got = await asyncio.to_thread(_scrape, tracker_metrics)
            return got if _value(got, "sluiceway_projection_lag") == 0 else None

        tracker = await eventually(caught_up, timeout_s=20, what="projection lag reaches 0")
        # a namespace of its own: every event of the stream is this run's, applied once
        assert _value(tracker, "sluiceway_events_total") == last_seq

        # ---- WatchRun (a streaming method that writes through its context) still streams
        # with the traced server: the run's whole log, then the end of the stream
        async with stack.channel(stack.state.tracker_addr) as channel:
            watched = [
                e.seq
                async for e in tracker_pb2_grpc.TrackerStub(channel).WatchRun(
                    tracker_pb2.WatchRunRequest(run_id=run_id), timeout=30
                )
            ]
        assert len(watched) == last_seq and watched == sorted(watched)

        # ---- health turns NOT_SERVING on shutdown (seen by a watcher opened before SIGTERM)
        worker = next(p for p in stack.state.processes if p.name == "worker-2")
        async with grpc.aio.insecure_channel(_ready(stack, "worker-2")["health_addr"]) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            os.kill(worker.pid, 15)
            then = await asyncio.wait_for(watch.read(), 10)
            assert then.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await asyncio.to_thread(stack.stop)


async def test_a_chunk_whose_worker_died_shows_both_attempts_in_one_whole_trace(
    otel_source: LocalPostgres,
    nats_server: LocalNats,
    namespace: str,
    tmp_path: Path,
    receiver: OtlpReceiver,
) -> None:
    dest = tmp_path / "dest"
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "state",
        workers=2,
        nats_url=nats_server.url,
        env=_env(namespace, otel_source, receiver, ack_wait_s="3"),
        instance_env={"worker-1": {crash.ENV: "worker.mid_read@1"}},
    )
    try:
        run_id = await _submit(stack, dest)
        log = next(p.log for p in stack.state.processes if p.name == "worker-1")
        await asyncio.to_thread(wait_sigkilled, stack.procs["worker-1"], 30.0, log)
        # worker-2 takes the task over once its ack_wait (3 s) has passed
        await _wait_terminal(stack, run_id)

        spans = await _whole_trace(receiver, run_id, CHUNKS + 1)
        _check_tree(spans, run_id)
        root_id = f"{telemetry.run_trace_ids(run_id)[1]:016x}"
        attempts = _named(spans, "chunk attempt")
        by_chunk: dict[int, list[ReceivedSpan]] = {}
        for a in attempts:
            assert a.parent_id == root_id
            by_chunk.setdefault(a.attr("sluiceway.chunk"), []).append(a)  # type: ignore[arg-type]
        retried = [c for c, spans_ in by_chunk.items() if len(spans_) == 2]
        assert len(retried) == 1 and sorted(map(len, by_chunk.values())) == [1, 1, 1, 2]
        dead, retry = sorted(by_chunk[retried[0]], key=lambda s: s.attr("sluiceway.attempt"))  # type: ignore[arg-type, return-value]
        # the dead attempt's span was emitted by the committer, with the attempt's own id
        assert dead.service == "sluiceway-committer" and dead.failed
        assert dead.attr("sluiceway.outcome") == "died"
        expected = telemetry.attempt_span_id(run_id, retried[0], dead.attr("sluiceway.attempt"))  # type: ignore[arg-type]
        assert dead.span_id == f"{expected:016x}"
        assert retry.service == "sluiceway-worker" and not retry.failed
        assert retry.attr("sluiceway.attempt") > dead.attr("sluiceway.attempt")  # type: ignore[operator]
        assert dead.span.end_time_unix_nano <= retry.span.start_time_unix_nano + SLACK_NS
    finally:
        await asyncio.to_thread(stack.stop)
