"""fold(events): the run's state, anomalies for forbidden events, fenced attempts."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.lifecycle import CHUNK_TRANSITIONS, RUN_TRANSITIONS
from sluiceway.common.domain.run import fold

from .histories import SPEC, T0, History


def test_a_whole_run_folds_to_succeeded_with_its_files() -> None:
    h = History().planned(2).chunk_done(0).chunk_done(1).committed()
    state = fold(h.events)
    assert state.status is ev.RunStatus.SUCCEEDED
    assert state.anomalies == []
    assert [f.chunk_index for f in state.committed_files()] == [0, 1]
    assert state.total_rows == 20


def test_status_follows_the_run_lifecycle() -> None:
    h = History().planned(1)
    assert fold(h.events).status is ev.RunStatus.PLANNING
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    assert fold(h.events).status is ev.RunStatus.RUNNING
    h.add(ev.ChunkCompleted(chunk_index=0, rows=0, files=0, attempt=1))
    state = fold(h.events)
    assert state.status is ev.RunStatus.RUNNING and state.all_chunks_completed()


def test_a_late_chunk_completed_after_the_run_failed_is_an_anomaly() -> None:
    h = History().planned(1).add(ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="x"))
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    state = fold(h.events)
    assert state.status is ev.RunStatus.FAILED
    assert [a.kind for a in state.anomalies] == ["chunk_started"]


def test_the_first_completion_wins_and_the_other_attempts_files_are_fenced() -> None:
    h = History().planned(1)
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    h.add(ev.ChunkStarted(chunk_index=0, attempt=2))  # redelivered while attempt 1 still runs
    h.add(ev.FileWritten(file_name="b", rows=5, part_index=0, chunk_index=0, attempt=2))
    h.add(ev.ChunkCompleted(chunk_index=0, rows=5, files=1, attempt=2))
    h.add(ev.FileWritten(file_name="a", rows=5, part_index=0, chunk_index=0, attempt=1))
    h.add(ev.ChunkCompleted(chunk_index=0, rows=5, files=1, attempt=1))
    state = fold(h.events)
    assert [f.file_name for f in state.committed_files()] == ["b"]
    assert state.chunks[0].winning_attempt == 2
    assert [a.kind for a in state.anomalies] == ["file_written", "chunk_completed"]


def test_a_file_written_before_the_winner_completed_is_kept_aside_as_a_loser() -> None:
    h = History().planned(1)
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    h.add(ev.FileWritten(file_name="a", rows=5, part_index=0, chunk_index=0, attempt=1))
    h.add(ev.ChunkStarted(chunk_index=0, attempt=2))
    h.add(ev.FileWritten(file_name="b", rows=5, part_index=0, chunk_index=0, attempt=2))
    h.add(ev.ChunkCompleted(chunk_index=0, rows=5, files=1, attempt=2))
    state = fold(h.events)
    assert [f.file_name for f in state.committed_files()] == ["b"]
    assert [f.file_name for f in state.chunks[0].losing_files()] == ["a"]


def test_a_retry_then_success_counts_one_retry() -> None:
    h = History().planned(1)
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    h.add(ev.ChunkFailed(chunk_index=0, error="connection lost", attempt=1, retryable=True))
    h.add(ev.RetryAttempted(chunk_index=0, attempt=2, reason="connection lost", backoff_ms=500))
    assert fold(h.events).chunks[0].status is ev.ChunkStatus.RETRY_WAIT
    h.chunk_done(0, attempt=2)
    state = fold(h.events)
    assert state.retries == 1 and state.chunks[0].status is ev.ChunkStatus.COMPLETED


def test_a_final_failure_marks_the_chunk_failed() -> None:
    h = History().planned(2)
    h.add(ev.ChunkStarted(chunk_index=1, attempt=1))
    h.add(ev.ChunkFailed(chunk_index=1, error="no such table", attempt=1, retryable=False))
    state = fold(h.events)
    assert [c.index for c in state.failed_chunks()] == [1]


def test_a_chunk_outside_the_plan_is_an_anomaly() -> None:
    h = History().planned(1).add(ev.ChunkStarted(chunk_index=7, attempt=1))
    state = fold(h.events)
    assert state.anomalies and "not in the plan" in state.anomalies[0].reason


def test_a_second_manifest_or_completion_is_an_anomaly() -> None:
    h = History().planned(1).chunk_done(0).committed()
    h.add(ev.RunCompleted(status=ev.RunStatus.FAILED))
    state = fold(h.events)
    assert state.status is ev.RunStatus.SUCCEEDED
    assert [a.kind for a in state.anomalies] == ["completed"]


def test_cancel_marks_open_chunks_canceled() -> None:
    h = History().planned(2).chunk_done(0)
    h.add(ev.CancelRequested(reason="user"))
    h.add(ev.RunCompleted(status=ev.RunStatus.CANCELED))
    state = fold(h.events)
    assert state.status is ev.RunStatus.CANCELED
    assert state.chunks[0].status is ev.ChunkStatus.COMPLETED
    assert state.chunks[1].status is ev.ChunkStatus.CANCELED


# ---- properties ---------------------------------------------------------------------------------


def _full_history(chunks: int, retries: set[int]) -> list[ev.RunEvent]:
    h = History().planned(chunks)
    for i in range(chunks):
        if i in retries:
            h.add(ev.ChunkStarted(chunk_index=i, attempt=1))
            h.add(ev.ChunkFailed(chunk_index=i, error="lost", attempt=1, retryable=True))
            h.add(ev.RetryAttempted(chunk_index=i, attempt=2, reason="lost", backoff_ms=1))
            h.chunk_done(i, attempt=2)
        else:
            h.chunk_done(i)
    return h.committed().events


histories = st.integers(1, 5).flatmap(
    lambda n: st.tuples(
        st.just(n), st.sets(st.integers(0, n - 1)), st.randoms(use_true_random=False)
    )
)


@settings(max_examples=200, deadline=None)
@given(histories)
def test_no_interleaving_or_duplicate_leaves_the_transition_tables(args: tuple) -> None:  # type: ignore[type-arg]
    chunks, retries, rnd = args
    events = _full_history(chunks, retries)
    # shuffle, duplicate and redeliver at random
    mixed = events + [rnd.choice(events) for _ in range(rnd.randint(0, 10))]
    rnd.shuffle(mixed)
    state = fold(mixed, run_id="r1")
    run_states = {s for pair in RUN_TRANSITIONS.items() for s in (pair[0][0], pair[1])}
    chunk_states = {s for pair in CHUNK_TRANSITIONS.items() for s in (pair[0][0], pair[1])}
    assert state.status in run_states
    assert all(c.status in chunk_states for c in state.chunks.values())
    # a committed file is always one of its chunk's winning attempt
    for f in state.committed_files():
        assert f.attempt == state.chunks[f.chunk_index].winning_attempt


@settings(max_examples=100, deadline=None)
@given(histories)
def test_applying_a_history_twice_changes_nothing(args: tuple) -> None:  # type: ignore[type-arg]
    chunks, retries, _ = args
    events = _full_history(chunks, retries)
    once = fold(events)
    twice = fold(events + events)
    assert once == twice
    assert once.status is ev.RunStatus.SUCCEEDED and once.anomalies == []


def test_in_order_histories_never_record_anomalies() -> None:
    rnd = random.Random(7)
    for _ in range(50):
        n = rnd.randint(1, 6)
        events = _full_history(n, {i for i in range(n) if rnd.random() < 0.3})
        assert fold(events).anomalies == []


def test_a_scheduled_occurrence_folds_through_ready_to_requested() -> None:
    h = History()
    h.add(ev.RunScheduled(spec=SPEC, scheduled_at=T0, priority=ev.PRIORITY_HIGH, cron="0 * * * *"))
    assert fold(h.events).status is ev.RunStatus.SCHEDULED
    h.add(ev.RunReady(reason="due", waiting_for="r0"))
    state = fold(h.events)
    assert state.status is ev.RunStatus.READY
    assert state.ready == ev.RunReady(reason="due", waiting_for="r0")
    assert (state.scheduled_at, state.priority, state.spec) == (T0, ev.PRIORITY_HIGH, SPEC)
    h.planned(1)
    state = fold(h.events)
    assert state.status is ev.RunStatus.PLANNING and not state.anomalies


def test_a_submission_priority_wins_over_the_spec() -> None:
    h = History()
    h.add(ev.RunRequested(spec=dataclasses.replace(SPEC, priority=ev.PRIORITY_LOW), priority=3))
    assert fold(h.events).priority == ev.PRIORITY_HIGH
    assert fold(History().planned(1).events).priority == ev.PRIORITY_NORMAL


def test_a_ready_run_cannot_skip_its_request() -> None:
    h = History()
    h.add(ev.RunScheduled(spec=SPEC, scheduled_at=T0))
    h.add(ev.PlanResolved(plan_id="p1", strategy="full", chunks=(ev.ChunkRange(0),)))
    state = fold(h.events)
    assert state.status is ev.RunStatus.SCHEDULED
    assert [a.kind for a in state.anomalies] == ["plan_resolved"]
