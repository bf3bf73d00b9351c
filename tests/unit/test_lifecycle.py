"""The transition tables: terminal states never change, every status is reachable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sluiceway.common.domain.events import ChunkStatus, RunStatus
from sluiceway.common.domain.lifecycle import (
    CHUNK_TRANSITIONS,
    RUN_TRANSITIONS,
    TERMINAL_CHUNK,
    TERMINAL_RUN,
    next_chunk_status,
    next_run_status,
)

S = TypeVar("S")


def test_terminal_run_states_have_no_way_out() -> None:
    # only a Warning is accepted after the end, and it leaves the status as it is
    out = {key: dst for key, dst in RUN_TRANSITIONS.items() if key[0] in TERMINAL_RUN}
    assert {trigger for _, trigger in out} == {"warning"}
    assert all(dst is src for (src, _), dst in out.items())


def test_terminal_chunk_states_have_no_way_out() -> None:
    assert not [key for key in CHUNK_TRANSITIONS if key[0] in TERMINAL_CHUNK]


def _reachable(table: Mapping[tuple[S, str], S], start: S) -> set[S]:
    reached, frontier = {start}, [start]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in table.items():
            if src is s and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    return reached


def test_every_run_status_is_reachable_from_nothing() -> None:
    assert _reachable(RUN_TRANSITIONS, RunStatus.UNSPECIFIED) == set(RunStatus)


def test_every_chunk_status_is_reachable_from_pending() -> None:
    reached = _reachable(CHUNK_TRANSITIONS, ChunkStatus.PENDING)
    assert reached == set(ChunkStatus) - {ChunkStatus.UNSPECIFIED}


def test_a_run_succeeds_only_from_committing() -> None:
    sources = {
        src
        for (src, _), dst in RUN_TRANSITIONS.items()
        if dst is RunStatus.SUCCEEDED and src is not dst
    }
    assert sources == {RunStatus.COMMITTING}


def test_skipped_only_from_planning_before_admission_or_an_empty_commit() -> None:
    sources = {
        src
        for (src, trigger), dst in RUN_TRANSITIONS.items()
        if dst is RunStatus.SKIPPED and src is not dst
    }
    # nothing to export (PLANNING); a missed tick or an overlap skip (SCHEDULED, READY); zero
    # rows with skip_empty, once the gates have passed (COMMITTING)
    assert sources == {
        RunStatus.PLANNING,
        RunStatus.SCHEDULED,
        RunStatus.READY,
        RunStatus.COMMITTING,
    }
    assert next_run_status(RunStatus.RUNNING, "completed:SKIPPED") is None


def test_a_scheduled_run_becomes_ready_then_requested_and_nothing_else() -> None:
    assert next_run_status(RunStatus.UNSPECIFIED, "scheduled") is RunStatus.SCHEDULED
    assert next_run_status(RunStatus.SCHEDULED, "ready") is RunStatus.READY
    assert next_run_status(RunStatus.READY, "requested") is RunStatus.REQUESTED
    # no shortcut: a scheduled run is requested only once its time came (READY)
    assert next_run_status(RunStatus.SCHEDULED, "requested") is None
    assert next_run_status(RunStatus.SCHEDULED, "plan_resolved") is None
    assert next_run_status(RunStatus.READY, "plan_resolved") is None
    # one occurrence per run: a second RunScheduled or RunReady is refused
    assert next_run_status(RunStatus.SCHEDULED, "scheduled") is None
    assert next_run_status(RunStatus.READY, "ready") is None
    assert next_run_status(RunStatus.REQUESTED, "scheduled") is None


def test_scheduled_and_ready_runs_can_be_canceled() -> None:
    for s in (RunStatus.SCHEDULED, RunStatus.READY):
        assert next_run_status(s, "cancel_requested") is s
        assert next_run_status(s, "completed:CANCELED") is RunStatus.CANCELED
        assert next_run_status(s, "completed:SUCCEEDED") is None


def test_any_active_run_can_fail_or_be_canceled() -> None:
    for s in (
        RunStatus.SCHEDULED,
        RunStatus.READY,
        RunStatus.REQUESTED,
        RunStatus.PLANNING,
        RunStatus.RUNNING,
        RunStatus.COMMITTING,
    ):
        assert next_run_status(s, "completed:FAILED") is RunStatus.FAILED
        assert next_run_status(s, "completed:CANCELED") is RunStatus.CANCELED


def test_a_retryable_failure_waits_and_a_final_one_fails() -> None:
    assert (
        next_chunk_status(ChunkStatus.RUNNING, "chunk_failed:retryable") is ChunkStatus.RETRY_WAIT
    )
    assert next_chunk_status(ChunkStatus.RUNNING, "chunk_failed:final") is ChunkStatus.FAILED
    assert next_chunk_status(ChunkStatus.RETRY_WAIT, "chunk_started") is ChunkStatus.RUNNING


def test_a_completed_chunk_refuses_a_second_completion() -> None:
    assert next_chunk_status(ChunkStatus.COMPLETED, "chunk_completed") is None
