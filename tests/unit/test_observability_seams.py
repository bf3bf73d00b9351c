"""Fast checks of the observability seams: listen addresses, the exporter choice, the run's
derived trace ids, dead attempts found in a history, the metric names on /metrics, and which
writer counts a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from sluiceway.common import metrics, telemetry
from sluiceway.common.bus import Appended
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.events import Producer
from sluiceway.common.domain.ids import new_event
from sluiceway.common.runtrace import TracedRunLog, dead_attempts
from sluiceway.common.settings import Settings, SettingsError, split_addr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:50053", ("::", 50053)),
        ("metrics.local:9464", ("metrics.local", 9464)),
    ],
)
def test_a_listen_address_is_host_and_port(raw: str, expected: tuple[str, int]) -> None:
    assert split_addr(raw) == expected


@pytest.mark.parametrize("raw", ["9464", ":9464", "0.0.0.0:", "0.0.0.0:x", "::1:9464", "h:70000"])
@pytest.mark.parametrize("name", ["SLUICEWAY_METRICS_ADDR", "SLUICEWAY_HEALTH_ADDR"])
def test_a_bad_listen_address_fails_fast_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})


def test_metrics_and_health_are_off_unless_an_address_is_given() -> None:
    settings = Settings.from_env({})
    assert (settings.metrics_addr, settings.health_addr) == ("", "")
    on = Settings.from_env({"SLUICEWAY_METRICS_ADDR": "0.0.0.0:9464"})
    assert on.metrics_addr == "0.0.0.0:9464"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, "none"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, "none"),
    ],
)
def test_spans_are_exported_only_when_a_collector_is_configured(
    env: dict[str, str], expected: str
) -> None:
    assert telemetry.traces_exporter(env) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_an_unsupported_exporter_is_refused_by_name(env: dict[str, str], variable: str) -> None:
    with pytest.raises(telemetry.TracingConfigError, match=variable):
        telemetry.traces_exporter(env)


def test_a_run_s_trace_ids_follow_from_its_run_id() -> None:
    a = telemetry.run_trace_ids("20261203T160000Z-0a1b2c3d")
    assert a == telemetry.run_trace_ids("20261203T160000Z-0a1b2c3d")
    assert a != telemetry.run_trace_ids("20261203T160000Z-0a1b2c3e")
    assert 0 < a[0] < 2**128 and 0 < a[1] < 2**64
    one = telemetry.attempt_span_id("r", 3, 1)
    assert one == telemetry.attempt_span_id("r", 3, 1) != telemetry.attempt_span_id("r", 3, 2)


def _event(body: ev.Body, at: datetime) -> ev.RunEvent:
    return new_event("r", "e", body, producer=Producer("worker", "w"), now=at)


def test_an_attempt_without_outcome_that_a_later_attempt_superseded_is_dead() -> None:
    t0 = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
    s = timedelta(seconds=1)
    history = [
        _event(ev.ChunkStarted(chunk_index=0, attempt=1), t0),
        _event(ev.ChunkStarted(chunk_index=1, attempt=1), t0),
        _event(ev.ChunkFailed(chunk_index=1, attempt=1, retryable=True), t0 + s),
        _event(ev.ChunkStarted(chunk_index=1, attempt=2), t0 + 2 * s),  # after a recorded failure
        _event(ev.ChunkStarted(chunk_index=0, attempt=2), t0 + 4 * s),  # attempt 1 died
        _event(ev.ChunkCompleted(chunk_index=0, attempt=2), t0 + 5 * s),
        _event(ev.ChunkStarted(chunk_index=2, attempt=1), t0 + 5 * s),  # still running
    ]
    (dead,) = dead_attempts(history)
    assert (dead.chunk_index, dead.attempt) == (0, 1)
    assert (dead.started_at, dead.superseded_at) == (t0, t0 + 4 * s)


def test_the_metrics_endpoint_shows_the_documented_names() -> None:
    registry = metrics.new_registry()
    metrics.RunMetrics(registry).run_ended("SUCCEEDED")
    worker = metrics.WorkerMetrics(registry)
    worker.chunk_completed(10, 100)
    worker.attempt_ended("completed", 0.3)
    projection = metrics.ProjectionMetrics(registry)
    projection.applied(5)
    projection.lag.set(2)
    metrics.consumer_lag(registry).labels("worker-chunks").set(7)
    text = generate_latest(registry).decode()
    for line in (
        'sluiceway_runs_total{status="SUCCEEDED"} 1.0',
        'sluiceway_runs_total{status="FAILED"} 0.0',
        "sluiceway_rows_exported_total 10.0",
        "sluiceway_bytes_written_total 100.0",
        'sluiceway_chunk_duration_seconds_count{outcome="completed"} 1.0',
        'sluiceway_chunk_duration_seconds_bucket{le="0.5",outcome="completed"} 1.0',
        "sluiceway_events_total 5.0",
        "sluiceway_projection_lag 2.0",
        'sluiceway_consumer_lag{consumer="worker-chunks"} 7.0',
    ):
        assert line in text.splitlines(), line
    assert "_created" not in text


class _Bus:
    """A bus whose RunCompleted appends are stored, or refused as another writer's."""

    def __init__(self, conflict: bool) -> None:
        self.conflict = conflict

    async def append(self, event: ev.RunEvent, headers: object = None, **_: object) -> Appended:
        return Appended(seq=7, conflict=self.conflict)


@pytest.mark.parametrize(("conflict", "counted"), [(False, 1.0), (True, 0.0)])
async def test_a_run_is_counted_by_the_writer_whose_completion_was_stored(
    conflict: bool, counted: float
) -> None:
    registry = metrics.new_registry()
    log = TracedRunLog(_Bus(conflict), metrics.RunMetrics(registry))  # type: ignore[arg-type]
    at = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
    await log.append(_event(ev.RunCompleted(status=ev.RunStatus.SUCCEEDED), at))
    await log.append(_event(ev.ChunkCompleted(chunk_index=0, attempt=1), at))
    assert registry.get_sample_value("sluiceway_runs_total", {"status": "SUCCEEDED"}) == counted
    assert registry.get_sample_value("sluiceway_runs_total", {"status": "FAILED"}) == 0.0
