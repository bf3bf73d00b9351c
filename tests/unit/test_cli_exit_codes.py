"""Exit codes of `run --wait`, `watch` and `cancel --wait`: run history -> fold -> the tracker's
RunSummary (through the same row and protobuf mapping as GetRun) -> exit code."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from sluiceway.cli import main as cli
from sluiceway.client import errors
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import fold
from sluiceway.common.domain.schedule import expiry_message
from sluiceway.tracker.adapters.servicer import summary_to_pb
from sluiceway.tracker.adapters.tables import summary_row
from sluiceway.tracker.domain import summary as sm
from sluiceway.v1 import events_pb2, tracker_pb2
from sluiceway.worker.domain.decide import Fail, decide_on_delivery, decide_on_error
from tests.unit.histories import History

CODES = (cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_RETRYABLE, cli.EXIT_DATA, cli.EXIT_SCHEMA)


def summary_of(h: History) -> tracker_pb2.RunSummary:
    return summary_to_pb(summary_row(sm.summarize(fold(h.events))))


def worker_final_failure(index: int, *, retryable: bool, attempt: int = 3) -> ev.ChunkFailed:
    """The ChunkFailed the worker's own decision appends when a chunk fails for good."""
    decision = decide_on_error(index, attempt, 3, retryable, "connection reset")
    assert isinstance(decision, Fail)
    return decision.failed


def test_the_codes_are_distinct() -> None:
    assert CODES == (0, 1, 2, 3, 4)


def test_a_run_that_succeeded_exits_0() -> None:
    h = History().planned(2).chunk_done(0).chunk_done(1).committed()
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == ("", cli.EXIT_OK)


def test_a_skipped_run_exits_0() -> None:
    h = History().planned(1)
    h.add(ev.RunCompleted(status=ev.RunStatus.SKIPPED, skip_reason="nothing new"))
    assert cli.exit_for(summary_of(h)) == cli.EXIT_OK


def test_a_planning_failure_is_a_generic_error() -> None:
    h = History().add(ev.RunRequested(spec=ev.ExportSpec(name="orders"))).failed("planning failed")
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_PLANNING, cli.EXIT_ERROR)


def test_a_run_failed_for_staying_open_past_the_retention_window_exits_2() -> None:
    """Expired: nothing was wrong with the data or the spec, a new run may pass."""
    h = History().planned(2).chunk_done(0).failed(expiry_message(timedelta(days=30)))
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_EXPIRED, cli.EXIT_RETRYABLE)
    assert "SLUICEWAY_RUNS_MAX_AGE" in s.error_message


def test_a_chunk_failed_on_a_permanent_error_exits_1() -> None:
    h = History().planned(2).chunk_done(0)
    h.add(ev.ChunkStarted(chunk_index=1, attempt=1))
    h.add(worker_final_failure(1, retryable=False, attempt=1)).failed()
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_CHUNK, cli.EXIT_ERROR)


def test_a_chunk_whose_attempts_were_spent_on_retryable_errors_exits_2() -> None:
    h = History().planned(2).chunk_done(0)
    for attempt in (1, 2, 3):
        h.add(ev.ChunkStarted(chunk_index=1, attempt=attempt))
        if attempt < 3:
            h.add(ev.ChunkFailed(chunk_index=1, error="reset", attempt=attempt, retryable=True))
            h.add(ev.RetryAttempted(chunk_index=1, attempt=attempt + 1, backoff_ms=1))
    h.add(worker_final_failure(1, retryable=True)).failed()
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_CHUNK_RETRIES_SPENT, cli.EXIT_RETRYABLE)


def test_a_delivery_beyond_the_budget_counts_as_retries_spent() -> None:
    h = History().planned(1)
    task = ev.ChunkTask(run_id="r1", range=ev.ChunkRange(index=0, start_key="0", end_key="100"))
    decision = decide_on_delivery(task, 4, 3)
    assert isinstance(decision, Fail)
    h.add(ev.ChunkStarted(chunk_index=0, attempt=3)).add(decision.failed).failed()
    assert cli.exit_for(summary_of(h)) == cli.EXIT_RETRYABLE


def test_one_permanent_failure_among_spent_budgets_is_not_retryable() -> None:
    h = History().planned(2)
    h.add(ev.ChunkStarted(chunk_index=0, attempt=3)).add(worker_final_failure(0, retryable=True))
    h.add(ev.ChunkStarted(chunk_index=1, attempt=1))
    h.add(worker_final_failure(1, retryable=False, attempt=1)).failed()
    assert cli.exit_for(summary_of(h)) == cli.EXIT_ERROR


def test_a_failed_validation_exits_3() -> None:
    h = History().planned(1).chunk_done(0)
    h.add(ev.ValidationResult(False, (ev.ValidationFailure("PART_MISSING", "p", "gone"),)))
    h.failed("validation failed: PART_MISSING")
    s = summary_of(h)
    assert (s.failure_cause, s.manifest_verification) == (sm.CAUSE_VALIDATION, "failed")
    assert cli.exit_for(s) == cli.EXIT_DATA


def test_a_failed_reconciliation_exits_3() -> None:
    h = History().planned(1).chunk_done(0, rows=10)
    h.add(ev.ValidationResult(passed=True))
    h.add(ev.ReconciliationResult(source_count=11, exported_rows=10, matched=False))
    h.failed("reconciliation failed")
    s = summary_of(h)
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_RECONCILIATION, cli.EXIT_DATA)


def test_schema_drift_that_failed_the_run_exits_4() -> None:
    h = History().planned(1)
    h.add(ev.SchemaChanged(removed=("price",))).failed("schema drift: price removed")
    s = summary_of(h)
    assert s.schema_changed
    assert (s.failure_cause, cli.exit_for(s)) == (sm.CAUSE_SCHEMA_DRIFT, cli.EXIT_SCHEMA)


def test_schema_drift_is_not_blamed_for_a_later_chunk_failure() -> None:
    h = History().planned(1).add(ev.SchemaChanged(added=("note",)))
    h.add(ev.ChunkStarted(chunk_index=0, attempt=1))
    h.add(worker_final_failure(0, retryable=False, attempt=1)).failed()
    s = summary_of(h)
    assert s.schema_changed and s.failure_cause == sm.CAUSE_CHUNK
    assert cli.exit_for(s) == cli.EXIT_ERROR


def test_a_canceled_run_exits_1_from_run_and_0_from_cancel() -> None:
    s = summary_of(History().planned(1).canceled())
    assert cli.exit_for(s) == cli.EXIT_ERROR
    assert cli.cancel_exit_for(s) == cli.EXIT_OK


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        (History().planned(1).chunk_done(0).committed(), cli.EXIT_ERROR),  # the cancel came late
        (
            History()
            .planned(1)
            .chunk_done(0)
            .add(ev.ValidationResult(False, (ev.ValidationFailure("SIZE_MISMATCH", "p", "m"),)))
            .failed(),
            cli.EXIT_DATA,
        ),
    ],
)
def test_cancel_wait_when_the_run_ended_otherwise(history: History, expected: int) -> None:
    assert cli.cancel_exit_for(summary_of(history)) == expected


def test_a_run_not_ended_in_time_is_retryable() -> None:
    assert cli.exit_for(summary_of(History().planned(2).chunk_done(0))) == cli.EXIT_RETRYABLE


def test_an_older_tracker_without_failure_cause_still_gives_3_for_failed_validation() -> None:
    s = tracker_pb2.RunSummary(status=events_pb2.RUN_STATUS_FAILED, manifest_verification="failed")
    assert cli.exit_for(s) == cli.EXIT_DATA
    assert cli.exit_for(tracker_pb2.RunSummary(status=events_pb2.RUN_STATUS_FAILED)) == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, cli.EXIT_RETRYABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, cli.EXIT_RETRYABLE),
        (grpc.StatusCode.NOT_FOUND, cli.EXIT_ERROR),
    ],
)
def test_unreachable_services_are_retryable(code: grpc.StatusCode, expected: int) -> None:
    failure = cli.grpc_failure(errors.from_status(code, "x"))
    assert (failure.code, str(failure)) == (expected, f"error: {code.name}: x")
