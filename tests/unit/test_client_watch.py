"""The SDK's watch against a real grpc.aio server with a fake tracker that cuts streams off
mid-way: every event arrives exactly once and in order, whatever the interruptions."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sluiceway.client import AsyncClient, Client, ClientOptions, RetryPolicy, Unavailable
from sluiceway.v1 import events_pb2
from tests.support.fakegrpc import RUN_ID, Cut, Served, run_events, serve

FAST = ClientOptions(
    timeout_s=5, watch_retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)
)
EVENTS = run_events(40)
SEQS = [e.seq for e in EVENTS]


async def restart_when_dropped(served: Served) -> None:
    await served.tracker.dropped.wait()
    await served.restart()


async def test_watch_resumes_after_cutoffs_and_a_dropped_server_giving_each_event_once() -> None:
    cuts = [
        Cut(5, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a slow reader cut off
        Cut(7, grpc.StatusCode.UNAVAILABLE),
        Cut(4, None),  # the server goes away mid-stream and comes back on the same port
    ]
    async with serve(EVENTS, cuts) as served:
        restarter = asyncio.create_task(restart_when_dropped(served))
        async with AsyncClient(tracker=served.addr, options=FAST) as client:
            got = [stored async for stored in client.watch(RUN_ID)]
        await asyncio.wait_for(restarter, 5)
    assert [e.seq for e in got] == SEQS
    assert [e.event.event_id for e in got] == [e.event.event_id for e in EVENTS]
    # each stream was reopened after the last event received, never before, never after
    assert served.tracker.watch_from == [0, SEQS[4], SEQS[11], SEQS[15]]


async def test_the_sync_client_resumes_the_same_way() -> None:
    cuts = [Cut(1, grpc.StatusCode.RESOURCE_EXHAUSTED), Cut(3, None), Cut(0)]
    async with serve(EVENTS, cuts) as served:
        restarter = asyncio.create_task(restart_when_dropped(served))

        def follow() -> list[int]:
            with Client(tracker=served.addr, options=FAST) as client:
                return [stored.seq for stored in client.watch(RUN_ID)]

        seqs = await asyncio.to_thread(follow)
        await asyncio.wait_for(restarter, 5)
    assert seqs == SEQS
    assert served.tracker.watch_from == [0, SEQS[0], SEQS[3], SEQS[3]]


async def test_watch_from_a_sequence_skips_what_was_already_seen() -> None:
    async with (
        serve(EVENTS, [Cut(2)]) as served,
        AsyncClient(tracker=served.addr, options=FAST) as client,
    ):
        got = [stored.seq async for stored in client.watch(RUN_ID, from_seq=SEQS[29])]
    assert got == SEQS[30:]


async def test_reconnections_that_bring_nothing_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    cuts = [Cut(0, grpc.StatusCode.UNAVAILABLE)] * 10
    async with (
        serve(EVENTS, cuts) as served,
        AsyncClient(tracker=served.addr, options=ClientOptions(watch_retry=policy)) as client,
    ):
        with pytest.raises(Unavailable, match="cut: resume"):
            async for _ in client.watch(RUN_ID):
                pass
    assert served.tracker.watch_from == [0, 0, 0, 0]  # the first stream and 3 retries


async def test_a_cutoff_after_progress_resumes_at_once_and_is_not_a_failure() -> None:
    # no retry allowed at all, yet every stream is cut after one event: each brought progress
    policy = RetryPolicy(max_attempts=0)
    cuts = [Cut(1, grpc.StatusCode.RESOURCE_EXHAUSTED)] * len(EVENTS)
    async with (
        serve(EVENTS, cuts) as served,
        AsyncClient(tracker=served.addr, options=ClientOptions(watch_retry=policy)) as client,
    ):
        got = [stored.seq async for stored in client.watch(RUN_ID)]
    assert got == SEQS
    assert len(served.tracker.watch_from) == len(EVENTS)


async def test_an_error_that_resuming_cannot_fix_is_raised_at_once() -> None:
    async with (
        serve(EVENTS, [Cut(3, grpc.StatusCode.PERMISSION_DENIED)]) as served,
        AsyncClient(tracker=served.addr, options=FAST) as client,
    ):
        got = []
        with pytest.raises(Exception) as info:
            async for stored in client.watch(RUN_ID):
                got.append(stored.seq)
    assert type(info.value).__name__ == "PermissionDenied"
    assert got == SEQS[:3] and served.tracker.watch_from == [0]


async def test_a_stream_that_ends_early_is_reopened_unless_the_run_is_over() -> None:
    events = run_events(10)[:-1]  # no RunCompleted: the server just ends the stream
    async with serve(events) as served, AsyncClient(tracker=served.addr, options=FAST) as client:
        served.tracker.status = events_pb2.RUN_STATUS_CANCELED
        got = [stored.seq async for stored in client.watch(RUN_ID)]
        assert got == [e.seq for e in events] and served.tracker.watch_from == [0]

        served.tracker.status = events_pb2.RUN_STATUS_RUNNING
        with pytest.raises(Unavailable, match=r"ended at seq \d+ before the run did"):
            async for _ in client.watch(RUN_ID):
                pass
    assert len(served.tracker.watch_from) == 1 + 1 + FAST.watch_retry.max_attempts


async def test_wait_reads_its_own_write_then_follows_the_run_to_its_summary() -> None:
    async with (
        serve(EVENTS, [Cut(10)]) as served,
        AsyncClient(tracker=served.addr, options=FAST) as client,
    ):
        summary = await client.wait(RUN_ID, min_seq=1)
        assert summary.status == events_pb2.RUN_STATUS_SUCCEEDED
        assert summary.last_seq == SEQS[-1]
        # GetRun first with the caller's min_seq, last with the last seq the watch delivered
        assert served.tracker.get_min_seq[0] == 1 and served.tracker.get_min_seq[-1] == SEQS[-1]
        assert served.tracker.watch_from == [0, SEQS[9]]
        # a run that has ended: one GetRun, no watch
        again = await client.wait(RUN_ID)
        assert again.status == events_pb2.RUN_STATUS_SUCCEEDED
        assert len(served.tracker.watch_from) == 2


async def test_leaving_a_sync_watch_early_ends_its_stream() -> None:
    async with serve(EVENTS) as served:

        def first_three() -> list[int]:
            with Client(tracker=served.addr, options=FAST) as client:
                seqs = []
                for stored in client.watch(RUN_ID):
                    seqs.append(stored.seq)
                    if len(seqs) == 3:
                        break
                # the client is still usable after an abandoned iterator
                assert client.get(RUN_ID).run_id == RUN_ID
                return seqs

        assert await asyncio.to_thread(first_three) == SEQS[:3]
