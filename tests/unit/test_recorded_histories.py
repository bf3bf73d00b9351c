"""Recorded run histories (tests/data/histories) replayed through fold and the tracker.

Each `NAME.jsonl` holds one run's events in stream order, one `sluiceway.v1.RunEvent` per line
in protobuf JSON (written by tools/record_history.py from a live stream); `NAME.expected.json`
holds the outcome a human checked: status, rows of the winning attempts, the files a committed
manifest lists, chunk statuses, retries and the kinds of the anomalies, in order. A change to
fold, the codec or the projection that gives another outcome for one of them fails here.

`older_version_succeeded.jsonl` is written in an older event shape. The envelope's
`event_version` marks non-additive changes of a body's shape, and there has been none, so it is
1 in every file; "older" here means what the log held before an additive change:

- `ChunkCompleted` has no `source_rows`/`source_counted` (added with per-chunk reconciliation;
  every other envelope and body field existed from the first version of events.proto);
- the JSON carries fields this reader does not know (`legacy_trace` on the envelope,
  `duration_ms` in `chunk_completed`), which a reader must ignore: lines are parsed with
  `ignore_unknown_fields=True`, as the binary decoder ignores unknown field numbers.

It must still fold to its expected state, with no snapshot count on any chunk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import RunState, fold
from sluiceway.tracker.adapters.projection import RawMessage, TrackerStore
from sluiceway.v1 import events_pb2

HISTORIES = Path(__file__).resolve().parents[1] / "data" / "histories"
NAMES = (
    "succeeded_retried_chunk",
    "fenced_double_attempt",
    "canceled",
    "failed_permanent_error",
    "anomalies",
    "older_version_succeeded",
)


def load(name: str) -> list[events_pb2.RunEvent]:
    lines = (HISTORIES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [
        json_format.Parse(line, events_pb2.RunEvent(), ignore_unknown_fields=True)
        for line in lines
        if line.strip()
    ]


def expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HISTORIES / f"{name}.expected.json").read_text())
    return data


def outcome(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "status": state.status.value,
        "rows": state.total_rows,
        "committed_files": [f.file_name for f in state.committed_files()]
        if state.manifest is not None
        else [],
        "chunks": {str(i): c.status.value for i, c in sorted(state.chunks.items())},
        "retries": state.retries,
        "anomaly_kinds": [a.kind for a in state.anomalies],
    }


def test_every_recorded_history_has_its_expected_outcome() -> None:
    recorded = {p.name.removesuffix(".jsonl") for p in HISTORIES.glob("*.jsonl")}
    sidecars = {p.name.removesuffix(".expected.json") for p in HISTORIES.glob("*.expected.json")}
    assert recorded == sidecars
    assert set(NAMES) <= recorded


@pytest.mark.parametrize("name", NAMES)
def test_a_recorded_history_folds_to_its_expected_outcome(name: str) -> None:
    events = [codec.event_from_pb(m) for m in load(name)]
    state = fold(events)
    want = expected(name)
    assert outcome(state) == {k: v for k, v in want.items() if k != "description"}
    if state.manifest is not None:
        assert state.manifest.row_count == state.total_rows
        assert state.manifest.part_count == len(state.committed_files())


@pytest.mark.parametrize("name", NAMES)
def test_a_recorded_history_projects_to_the_same_run_in_the_tracker(name: str) -> None:
    """Through the binary form the stream holds, in batches of five, into DuckDB."""
    msgs = [
        RawMessage(i + 1, f"t.runs.{m.run_id}.x", m.SerializeToString(deterministic=True))
        for i, m in enumerate(load(name))
    ]
    want = expected(name)
    store = TrackerStore(":memory:")
    try:
        for i in range(0, len(msgs), 5):
            store.apply(msgs[i : i + 5])
        run = store.get_run(want["run_id"])
        parts = store.list_parts(want["run_id"])
        chunks = store.list_chunks(want["run_id"])
        anomalies = store.anomalies(want["run_id"])
    finally:
        store.close()
    assert run is not None
    assert (run["status"], run["total_rows"], run["retries"], run["anomalies"]) == (
        want["status"],
        want["rows"],
        want["retries"],
        len(want["anomaly_kinds"]),
    )
    assert {str(c["chunk_index"]): c["status"] for c in chunks} == want["chunks"]
    assert [a["kind"] for a in anomalies] == want["anomaly_kinds"]
    if want["committed_files"]:
        assert [p["file_name"] for p in parts if p["committed"]] == want["committed_files"]


def test_the_older_shape_lacks_the_later_fields_and_carries_unknown_ones() -> None:
    """Guards the premise of the older file, so that a re-recording cannot silently drop it."""
    raw = [
        json.loads(line)
        for line in (HISTORIES / "older_version_succeeded.jsonl").read_text().splitlines()
    ]
    completed = [r["chunk_completed"] for r in raw if "chunk_completed" in r]
    assert completed and all(
        "source_rows" not in c and "source_counted" not in c and "duration_ms" in c
        for c in completed
    )
    assert all("legacy_trace" in r for r in raw)
    with pytest.raises(json_format.ParseError):  # a strict reader would refuse it
        json_format.Parse(json.dumps(raw[0]), events_pb2.RunEvent())


def test_an_older_chunk_completed_folds_without_a_snapshot_count() -> None:
    state = fold(codec.event_from_pb(m) for m in load("older_version_succeeded"))
    assert state.status is ev.RunStatus.SUCCEEDED
    assert [c.source_rows for c in state.chunks.values()] == [None, None]
    # while a current writer's completion carries its count
    current = fold(codec.event_from_pb(m) for m in load("succeeded_retried_chunk"))
    assert all(c.source_rows == c.rows for c in current.chunks.values())
