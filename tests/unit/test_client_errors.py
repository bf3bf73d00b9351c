"""The SDK's typed errors: each gRPC status maps to its class, carrying the server's message and,
for bad input, the field the server named; over a real grpc.aio server with fake servicers."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from sluiceway.client import (
    AsyncClient,
    Client,
    ClientOptions,
    Cutoff,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SluicewayError,
    Unavailable,
    config_document,
    errors,
)
from sluiceway.common.config import ConfigError
from sluiceway.common.domain.events import ExportSpec
from sluiceway.common.domain.ids import InvalidRunId, check_run_id
from sluiceway.planner.adapters.servicer import request_problem
from sluiceway.tracker.adapters.servicer import _page_size
from sluiceway.v1 import control_pb2, events_pb2
from tests.support.fakegrpc import RUN_ID, run_events, serve

# ---- the mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, False),
        (grpc.StatusCode.NOT_FOUND, NotFound, False),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition, False),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted, True),
        (grpc.StatusCode.INTERNAL, SluicewayError, False),
        (grpc.StatusCode.UNKNOWN, SluicewayError, False),
    ],
)
def test_each_status_maps_to_its_class(
    code: grpc.StatusCode, cls: type[SluicewayError], retryable: bool
) -> None:
    err = errors.from_status(code, "the server's\n  message")
    assert type(err) is cls and isinstance(err, SluicewayError)
    assert (err.code, err.message, err.retryable) == (code, "the server's\n  message", retryable)
    assert str(err) == f"{code.name}: the server's message"  # one line


def test_cutoff_is_resource_exhausted() -> None:
    assert Cutoff is ResourceExhausted


def _message(exc_type: type[Exception], fn: object, *args: object) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args)  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        # the messages the servers actually send, made by the servers' own code
        (_message(InvalidRunId, check_run_id, "bad id!"), "run_id"),
        (
            str(ConfigError("use one", file="e.yaml", export="orders", field="chunk_size")),
            "chunk_size",
        ),
        # a problem with the whole document: the servicer names the request field
        ("config: " + str(ConfigError("no export named 'x'", file="e.yaml")), "config"),
        (request_problem(control_pb2.SubmitRunRequest(requested_by="x" * 300)), "requested_by"),
        (request_problem(control_pb2.SubmitRunRequest(options={"": "v"})), "options"),
        (_message(ValueError, _page_size, -1, 50, 500), "page_size"),
        ("run_id is required", "run_id"),
        ("export: one of spec or config is required", "export"),
        ("Something else entirely", ""),
    ],
)
def test_invalid_argument_names_the_field_the_server_named(message: str | None, field: str) -> None:
    assert message
    err = errors.from_status(grpc.StatusCode.INVALID_ARGUMENT, message)
    assert isinstance(err, InvalidArgument)
    assert err.field == field


# ---- over the wire -------------------------------------------------------------------------


async def test_control_errors_arrive_typed_with_the_servers_message() -> None:
    async with serve(run_events(3)) as served, AsyncClient(served.addr, served.addr) as client:
        spec = ExportSpec(name="orders")
        with pytest.raises(InvalidArgument) as bad:
            await client.submit(spec, requested_by="too-long")
        assert bad.value.field == "requested_by"
        assert bad.value.message == "requested_by: at most 256 characters"

        doc = config_document("exports: [{chunk_count: 3}]", "orders", file_name="exports.yaml")
        with pytest.raises(InvalidArgument) as bad_config:
            await client.submit(doc)
        assert bad_config.value.field == "chunk_count"

        with pytest.raises(NotFound, match="run 'nope' not found"):
            await client.cancel("nope")
        with pytest.raises(FailedPrecondition, match="already ended SUCCEEDED"):
            await client.cancel(RUN_ID)
        with pytest.raises(Unavailable) as plan:
            await client.plan(spec)
        assert plan.value.retryable and "source unreachable" in plan.value.message

        ok = await client.submit(doc.__class__(text="x"), requested_by="me", options={"k": "v"})
        assert (ok.run_id, ok.stream_seq) == (RUN_ID, 7)
        sent = served.control.submitted[-1]
        assert (sent.requested_by, dict(sent.options), sent.config.text) == ("me", {"k": "v"}, "x")
        # the domain ExportSpec travels as its message
        await client.submit(ExportSpec(name="orders", table="public.orders"))
        assert served.control.submitted[-1].spec.table == "public.orders"
        with pytest.raises(TypeError, match="export: expected ExportSpec or ConfigDocument"):
            await client.submit("orders")  # type: ignore[arg-type]


async def test_tracker_errors_arrive_typed() -> None:
    async with serve(run_events(3)) as served, AsyncClient(tracker=served.addr) as client:
        with pytest.raises(NotFound):
            await client.get("no-such-run")
        served.tracker.delay_s = 5.0
        with pytest.raises(DeadlineExceeded):
            await client.get(RUN_ID, timeout_s=0.1)
        served.tracker.delay_s = 0.0
        served.tracker.abort_with = (grpc.StatusCode.INTERNAL, "boom")
        with pytest.raises(SluicewayError) as internal:
            await client.get(RUN_ID)
        assert type(internal.value) is SluicewayError
        assert internal.value.code == grpc.StatusCode.INTERNAL
        served.tracker.abort_with = (grpc.StatusCode.UNAVAILABLE, "not caught up: at seq 3, need 9")
        before = served.tracker.unary_calls
        with pytest.raises(Unavailable, match="not caught up"):
            await client.get(RUN_ID, min_seq=9)
        assert served.tracker.unary_calls == before + 1
        with pytest.raises(Unavailable, match="not caught up"):
            await client.get(RUN_ID, min_seq=9, wait_s=0.5)  # retried for half a second
        assert served.tracker.unary_calls >= before + 1 + 3


async def test_a_service_that_is_not_there_is_unavailable() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncClient(tracker=f"127.0.0.1:{port}", options=ClientOptions(timeout_s=5)) as c:
        with pytest.raises(Unavailable) as info:
            await c.get(RUN_ID)
    assert info.value.retryable


async def test_a_missing_address_is_a_clear_error() -> None:
    async with AsyncClient(tracker="127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="no control address"):
            await client.cancel(RUN_ID)


async def test_metadata_goes_with_every_call() -> None:
    opts = ClientOptions(metadata=(("authorization", "Bearer t0k"), ("x-team", "data")))
    async with serve(run_events(3)) as served, AsyncClient(tracker=served.addr, options=opts) as c:
        await c.get(RUN_ID)
    seen = served.tracker.metadata[-1]
    assert seen["authorization"] == "Bearer t0k" and seen["x-team"] == "data"


async def test_pages_are_followed_to_the_end_or_the_limit() -> None:
    events = run_events(40)
    async with serve(events) as served, AsyncClient(tracker=served.addr) as client:
        runs = [r.run_id async for r in client.iter_runs(page_size=5)]
        assert runs == [f"r{i:03d}" for i in range(23)]
        assert [r.run_id async for r in client.iter_runs(limit=12)] == runs[:12]
        page = await client.list_runs(page_size=10, page_token="20")
        assert [r.run_id for r in page.runs] == runs[20:] and not page.next_page_token
        seqs = [e.seq async for e in client.iter_events(RUN_ID, page_size=7)]
        assert seqs == [e.seq for e in events]
        tail = [e.seq async for e in client.iter_events(RUN_ID, after_seq=events[36].seq)]
        assert tail == [e.seq for e in events[37:]]


async def test_the_sync_client_raises_the_same_errors() -> None:
    async with serve(run_events(3)) as served:

        def calls() -> list[str]:
            out = []
            with Client(served.addr, served.addr) as client:
                for fn in (
                    lambda: client.get("no-such-run"),
                    lambda: client.cancel(RUN_ID),
                    lambda: client.submit(ExportSpec(name="o"), requested_by="too-long"),
                ):
                    try:
                        fn()
                    except SluicewayError as exc:
                        out.append(f"{type(exc).__name__} {exc}")
                statuses = [r.status for r in client.iter_runs(limit=2)]
                assert statuses == [events_pb2.RUN_STATUS_UNSPECIFIED] * 2
            return out

        out = await asyncio.to_thread(calls)
    assert out == [
        "NotFound NOT_FOUND: run 'no-such-run' not found",
        f"FailedPrecondition FAILED_PRECONDITION: run {RUN_ID!r} already ended SUCCEEDED",
        "InvalidArgument INVALID_ARGUMENT: requested_by: at most 256 characters",
    ]
