"""The worker's pure decisions: backoff, budgets, retry versus fail, completion facts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sluiceway.common.domain.events import ChunkRange, ChunkTask, ExportSpec
from sluiceway.worker.domain.decide import (
    Fail,
    Part,
    Retry,
    Run,
    attempt_budget,
    backoff_ms,
    decide_on_delivery,
    decide_on_error,
    decide_on_success,
)

DOMAIN = Path(__file__).resolve().parents[2] / "services/worker/src/sluiceway/worker/domain"
FORBIDDEN = {"asyncio", "nats", "grpc", "duckdb", "pyarrow", "google", "opentelemetry"}


def test_worker_domain_imports_no_io_library() -> None:
    for path in DOMAIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 1_000), (1, 1_000), (2, 2_000), (3, 4_000), (6, 32_000), (7, 60_000), (10_000, 60_000)],
)
def test_backoff_doubles_per_attempt_and_is_capped(attempt: int, expected: int) -> None:
    assert backoff_ms(attempt) == expected


def test_backoff_respects_a_custom_base_and_cap() -> None:
    assert [backoff_ms(a, base_ms=100, cap_ms=350) for a in (1, 2, 3, 4)] == [100, 200, 350, 350]


@pytest.mark.parametrize(
    ("spec_max", "max_deliver", "expected"),
    [(3, 10, 3), (0, 10, 3), (12, 10, 10), (1, 10, 1), (5, 0, 5), (0, 2, 2)],
)
def test_attempt_budget_is_the_export_budget_bounded_by_the_consumer(
    spec_max: int, max_deliver: int, expected: int
) -> None:
    assert attempt_budget(spec_max, max_deliver) == expected


def test_a_retryable_error_with_attempts_left_is_retried_with_backoff() -> None:
    d = decide_on_error(4, attempt=2, max_attempts=3, retryable=True, error="deadlock")
    assert isinstance(d, Retry)
    assert d.backoff_ms == 2_000
    assert d.failed.retryable and d.failed.attempt == 2 and d.failed.chunk_index == 4
    assert d.retry.attempt == 3 and d.retry.backoff_ms == 2_000 and d.retry.reason == "deadlock"
    assert d.retry.chunk_index == 4


def test_a_retryable_error_on_the_last_attempt_fails_for_good_naming_the_budget() -> None:
    d = decide_on_error(0, attempt=3, max_attempts=3, retryable=True, error="lock timeout")
    assert isinstance(d, Fail)
    assert not d.failed.retryable
    assert d.failed.error == "attempt budget of 3 spent: lock timeout"


def test_a_permanent_error_fails_at_once_whatever_the_budget() -> None:
    d = decide_on_error(1, attempt=1, max_attempts=10, retryable=False, error="no such table: x")
    assert isinstance(d, Fail)
    assert d.failed.error == "no such table: x" and not d.failed.retryable


def _task(index: int = 2) -> ChunkTask:
    return ChunkTask(
        run_id="r",
        spec=ExportSpec(name="e"),
        range=ChunkRange(index=index, start_key="10", end_key="20"),
    )


def test_a_delivery_within_budget_runs_and_announces_the_range() -> None:
    d = decide_on_delivery(_task(), attempt=2, max_attempts=3)
    assert isinstance(d, Run)
    assert (d.started.chunk_index, d.started.start_key, d.started.end_key, d.started.attempt) == (
        2,
        "10",
        "20",
        2,
    )


def test_a_delivery_beyond_budget_fails_without_reading() -> None:
    d = decide_on_delivery(_task(), attempt=4, max_attempts=3)
    assert isinstance(d, Fail)
    assert d.failed.error.startswith("attempt budget of 3 spent")
    assert not d.failed.retryable and d.failed.attempt == 4


def test_success_lists_every_part_in_order_and_sums_rows() -> None:
    parts = (Part("b", 5, 50, 1, "xxh3:b"), Part("a", 7, 70, 0, "xxh3:a"))
    done = decide_on_success(3, 2, parts)
    assert [f.part_index for f in done.files] == [0, 1]
    assert all(f.chunk_index == 3 and f.attempt == 2 for f in done.files)
    assert done.files[0].file_name == "a" and done.files[0].content_fingerprint == "xxh3:a"
    assert (done.completed.rows, done.completed.files, done.completed.attempt) == (12, 2, 2)


def test_an_empty_chunk_completes_with_no_files() -> None:
    done = decide_on_success(0, 1, ())
    assert done.files == () and done.completed.rows == 0 and done.completed.files == 0
