"""The codec: every body round-trips; bad bytes are poison; unknown fields are ignored."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.v1 import events_pb2 as pb

from .histories import SPEC


def _envelope(body: ev.Body) -> ev.RunEvent:
    return ev.RunEvent(
        event_id=event_id("r1", body),
        run_id="r1",
        export_name="orders",
        occurred_at=datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC),
        body=body,
        producer=ev.Producer("worker", "w-1"),
        attempt=2,
        resources=ev.ResourceUsage(10.5, 20.25, 1.0, 2.0),
    )


SAMPLES: list[ev.Body] = [
    ev.RunRequested(spec=SPEC, requested_by="me", options={"k": "v"}),
    ev.PlanResolved(
        plan_id="p",
        strategy="chunked",
        chunks=(ev.ChunkRange(0, "1", "10"), ev.ChunkRange(1, "", "", False, True)),
        schema=(ev.SchemaField("id", "int64", False, "bigint"),),
        row_estimate=5,
    ),
    ev.PlanWarning("r", "m"),
    ev.ChunkStarted(1, "a", "b", 2),
    ev.FileWritten("f.parquet", 5, 100, 0, 1, 2, "xxh3:00"),
    ev.ChunkCompleted(1, 5, 1, 2),
    ev.ChunkFailed(1, "boom", 2, True),
    ev.RetryAttempted(3, "boom", 1500, 1),
    ev.QualityIssue(ev.Severity.FAIL, "row_count_min", "too few"),
    ev.SchemaChanged(("a",), ("b",), ("c: int32 -> int64",)),
    ev.Warning("ctx", "msg"),
    ev.ValidationResult(False, (ev.ValidationFailure("SIZE_MISMATCH", "p", "m"),)),
    ev.ReconciliationResult(10, 10, True),
    ev.ManifestCommitted("file:///m", "xxh3:1", 10, 1, "1", "9", 1000),
    ev.RunCompleted(ev.RunStatus.SKIPPED, "", 12, "no new rows"),
    ev.CancelRequested("user", "me"),
    ev.RunScheduled(
        spec=SPEC,
        scheduled_at=datetime(2026, 11, 1, 2, 0, tzinfo=UTC),
        priority=ev.PRIORITY_HIGH,
        cron="0 2 * * *",
        timezone="Europe/Paris",
    ),
    ev.RunReady("due", "20261101T010000Z-sabc"),
]


def test_the_samples_cover_every_body() -> None:
    assert {type(b) for b in SAMPLES} == set(ev.KINDS)


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_every_body_round_trips(body: ev.Body) -> None:
    event = _envelope(body)
    assert codec.decode(codec.encode(event)) == event


def test_encoding_is_deterministic() -> None:
    event = _envelope(SAMPLES[0])
    assert codec.encode(event) == codec.encode(codec.decode(codec.encode(event)))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_are_poison(data: bytes) -> None:
    try:
        codec.decode(data)
    except codec.Poison:
        pass


def test_an_event_without_a_body_is_poison() -> None:
    msg = pb.RunEvent(event_id="x", run_id="r")
    with pytest.raises(codec.Poison, match="no body"):
        codec.decode(msg.SerializeToString())


def test_a_field_unknown_to_this_reader_is_ignored() -> None:
    # simulate a newer writer: an unknown field number appended to the bytes
    data = codec.encode(_envelope(SAMPLES[3])) + b"\xf8\x3e\x01"  # field 999, varint 1
    assert codec.decode(data).body == SAMPLES[3]


def test_the_task_round_trips() -> None:
    task = ev.ChunkTask(
        run_id="r",
        plan_id="p",
        spec=SPEC,
        range=ev.ChunkRange(2, "1", "5", True),
        schema=(ev.SchemaField("id", "int64"),),
        chunk_count=3,
    )
    assert codec.decode_task(codec.encode_task(task)) == task


def test_domain_and_proto_share_field_names() -> None:
    for cls, field_name in codec._FIELD_BY_BODY.items():
        proto_fields = set(
            pb.RunEvent.DESCRIPTOR.fields_by_name[field_name].message_type.fields_by_name
        )
        domain_fields = {f.name for f in dataclasses.fields(cls)}
        assert domain_fields == proto_fields, cls.__name__
