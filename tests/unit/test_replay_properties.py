"""Replay properties: random run histories, shuffled and redelivered, through fold and the tracker.

Histories are generated the way the services produce them (a plan, concurrent chunk lanes with
retries, permanent failures and a second live attempt, an ending), then perturbed: shuffled with
no regard for order, with events repeated anywhere (also at the end) and, sometimes, a different
body under an id already used. test_fold.py covers fixed histories and the coarse "the final
status is some table state"; here every single step is checked against the tables.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.lifecycle import (
    CHUNK_TRANSITIONS,
    RUN_TRANSITIONS,
    run_trigger,
)
from sluiceway.common.domain.run import RunState, evolve, fold
from sluiceway.tracker.adapters.projection import RawMessage, TrackerStore
from sluiceway.tracker.adapters.tables import TABLES

from .histories import SPEC, T0, History

RUN = "r1"
MAX_ATTEMPTS = 3
CHUNK_BODIES = (
    ev.ChunkStarted,
    ev.FileWritten,
    ev.ChunkCompleted,
    ev.ChunkFailed,
    ev.RetryAttempted,
)
FOLD = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROJECTION = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- generators -----------------------------------------------------------------------------


def _attempt(c: int, attempt: int, parts: int) -> list[ev.Body]:
    return [ev.ChunkStarted(chunk_index=c, attempt=attempt)] + [
        ev.FileWritten(
            file_name=f"part-{c:05d}-{p:04d}-a{attempt}.parquet",
            rows=5,
            bytes=100 + p,
            part_index=p,
            chunk_index=c,
            attempt=attempt,
            content_fingerprint=f"xxh3:{c}{p}{attempt}",
        )
        for p in range(parts)
    ]


def _completed(c: int, attempt: int, parts: int) -> ev.ChunkCompleted:
    return ev.ChunkCompleted(chunk_index=c, rows=5 * parts, files=parts, attempt=attempt)


@st.composite
def _lane(draw: st.DrawFn, c: int) -> tuple[list[ev.Body], bool]:
    """One chunk as its workers report it: attempts until one completes or the chunk fails for
    good. Returns the facts in the order they are appended and whether the chunk completed."""
    lane: list[ev.Body] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        parts = draw(st.integers(0, 2))
        ends = ["ok", "permanent", "twin"] + (["retry"] if attempt < MAX_ATTEMPTS else [])
        end = draw(st.sampled_from(ends))
        if end == "ok":
            return [*lane, *_attempt(c, attempt, parts), _completed(c, attempt, parts)], True
        if end == "permanent":
            failed = ev.ChunkFailed(chunk_index=c, error="no such table", attempt=attempt)
            return [*lane, *_attempt(c, attempt, parts), failed], False
        if end == "twin":
            # the task is redelivered after ack_wait while this attempt still runs: two live
            # attempts race, the first completion wins, the loser's later facts are fenced off
            first = [*_attempt(c, attempt, parts), _completed(c, attempt, parts)]
            second = [*_attempt(c, attempt + 1, 1), _completed(c, attempt + 1, 1)]
            picks = draw(st.permutations([0] * (len(first) - 1) + [1] * len(second)))
            merged: list[ev.Body] = [first.pop(0)]
            for pick in picks:
                merged.append((first if pick == 0 else second).pop(0))
            return [*lane, *merged], True
        lane += [
            *_attempt(c, attempt, parts),
            ev.ChunkFailed(chunk_index=c, error="connection lost", attempt=attempt, retryable=True),
            ev.RetryAttempted(
                chunk_index=c, attempt=attempt + 1, reason="connection lost", backoff_ms=100
            ),
        ]
    raise AssertionError("unreachable: the last attempt always ends")


@st.composite
def run_histories(draw: st.DrawFn) -> list[ev.RunEvent]:
    """A run as the services append it: request, plan, chunk lanes interleaved as concurrent
    workers would, warnings anywhere, then an ending (commit, failure, cancel, or still open)."""
    chunks = draw(st.integers(1, 4))
    h = History(RUN)
    start = draw(st.sampled_from(["submitted", "scheduled", "never_admitted"]))
    if start != "submitted":  # an occurrence of a schedule: SCHEDULED -> READY -> REQUESTED
        h.add(
            ev.RunScheduled(spec=SPEC, scheduled_at=T0, priority=ev.PRIORITY_LOW, cron="* * * * *")
        )
        if draw(st.booleans()) or start == "scheduled":
            h.add(ev.RunReady(reason="due", waiting_for=draw(st.sampled_from(["", "r0"]))))
    if start == "never_admitted":  # skipped (missed tick, overlap) or canceled before admission
        if draw(st.booleans()):
            h.add(ev.RunCompleted(status=ev.RunStatus.SKIPPED, skip_reason="run r0 in flight"))
        else:
            h.add(ev.CancelRequested(reason="user", requested_by="test"))
            if draw(st.booleans()):
                h.add(ev.RunCompleted(status=ev.RunStatus.CANCELED))
        return h.events
    h.planned(chunks)
    if draw(st.booleans()):
        h.add(ev.PlanWarning(rule="no_index", message="chunk column has no index"))
    lanes = [draw(_lane(c)) for c in range(chunks)]
    all_ok = all(ok for _, ok in lanes)
    queues = [list(lane) for lane, _ in lanes]
    order = draw(st.permutations([c for c, q in enumerate(queues) for _ in q]))
    warn_at = set(draw(st.lists(st.integers(0, len(order)), max_size=2)))
    for i, c in enumerate(order):
        if i in warn_at:
            h.add(ev.Warning(context=f"chunk {c}", message=f"slow read {i}"))
        h.add(queues[c].pop(0))
    if draw(st.booleans()):
        h.add(ev.Warning(context="worker", message="losing attempt moved aside"))
    ending = draw(st.sampled_from(["commit", "fail", "cancel", "open"]))
    if ending == "commit" and all_ok:
        if draw(st.booleans()):
            h.add(ev.QualityIssue(severity=ev.Severity.WARN, rule="nulls", message="many nulls"))
        h.add(ev.ValidationResult(passed=True))
        h.add(ev.ReconciliationResult(source_count=5, exported_rows=5, matched=True))
        h.add(ev.ManifestCommitted(manifest_uri="file:///m.json", row_count=5, part_count=1))
        h.add(ev.RunCompleted(status=ev.RunStatus.SUCCEEDED, duration_ms=10))
    elif ending in ("commit", "fail"):
        h.add(ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="a chunk failed"))
    elif ending == "cancel":
        h.add(ev.CancelRequested(reason="user", requested_by="test"))
        if draw(st.booleans()):
            h.add(ev.RunCompleted(status=ev.RunStatus.CANCELED))
    return h.events


def _mutant(e: ev.RunEvent) -> ev.RunEvent | None:
    """The same event id with a different body (a producer bug), when the kind allows it."""
    b = e.body
    if isinstance(b, ev.ChunkCompleted):
        body: ev.Body = dataclasses.replace(b, rows=b.rows + 1)
    elif isinstance(b, ev.FileWritten):
        body = dataclasses.replace(b, bytes=b.bytes + 1)
    elif isinstance(b, ev.ManifestCommitted):
        body = dataclasses.replace(b, row_count=b.row_count + 1)
    else:
        return None
    return dataclasses.replace(e, body=body)


@st.composite
def redelivered(draw: st.DrawFn, events: Sequence[ev.RunEvent]) -> list[ev.RunEvent]:
    """`events` with copies of some of them inserted anywhere after their original, and some
    at the very end (a redelivery comes after the first delivery)."""
    out = list(events)
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(events) - 1))
        original = out.index(events[i])
        at = draw(st.integers(original + 1, len(out)))
        out.insert(at, events[i])
    tail = draw(st.lists(st.sampled_from(list(events)), max_size=3))
    return out + tail


@st.composite
def perturbed_histories(draw: st.DrawFn) -> list[ev.RunEvent]:
    """A realistic history, shuffled with no regard for order, with duplicates anywhere (also
    at the end) and sometimes a different body under an id already used."""
    events = draw(run_histories())
    mixed = list(draw(st.permutations(events)))
    extra = draw(st.lists(st.sampled_from(events), max_size=8))
    for e in extra:
        mixed.insert(draw(st.integers(0, len(mixed))), e)
    mutants = [m for m in map(_mutant, draw(st.lists(st.sampled_from(events), max_size=2))) if m]
    for m in mutants:
        mixed.insert(draw(st.integers(0, len(mixed))), m)
    mixed += draw(st.lists(st.sampled_from(events), max_size=3))  # redeliveries at the end
    return mixed


# ---- the step-by-step oracle ------------------------------------------------------------------


def _chunk_trigger(body: ev.Body) -> str:
    if isinstance(body, ev.ChunkFailed):
        return "chunk_failed:retryable" if body.retryable else "chunk_failed:final"
    return ev.kind_of(body)


def _run_trigger(event: ev.RunEvent) -> str:
    outcome = event.body.status if isinstance(event.body, ev.RunCompleted) else None
    return run_trigger(event.kind, outcome)


def _allowed(state: RunState, event: ev.RunEvent) -> bool:
    """What the tables say about an event never applied before, from this state."""
    if (state.status, _run_trigger(event)) not in RUN_TRANSITIONS:
        return False
    body = event.body
    if isinstance(body, CHUNK_BODIES):
        chunk = state.chunks.get(body.chunk_index)
        return chunk is not None and (chunk.status, _chunk_trigger(body)) in CHUNK_TRANSITIONS
    return True


def _view(state: RunState) -> tuple[Any, ...]:
    """Everything an event can change, except the anomaly list."""
    chunks = tuple(
        (i, c.status, c.attempt, c.winning_attempt, c.rows, c.error, tuple(c.files))
        for i, c in sorted(state.chunks.items())
    )
    return (
        state.status,
        chunks,
        state.manifest,
        state.completion,
        state.cancel,
        state.validation,
        state.reconciliation,
        len(state.warnings),
        len(state.plan_warnings),
        len(state.quality_issues),
        state.retries,
        len(state.applied),
    )


def replay(events: Sequence[ev.RunEvent]) -> tuple[RunState, Counter[str]]:
    """evolve() one event at a time, checking each step against the tables; returns the final
    state and how many events were applied, recorded as anomalies, or exact duplicates."""
    state = RunState(run_id=RUN)
    outcomes: Counter[str] = Counter()
    for event in events:
        run_before = state.status
        chunks_before = {i: c.status for i, c in state.chunks.items()}
        view_before = _view(state)
        seen = state.applied.get(event.event_id)
        if event.body in state.refused.get(event.event_id, ()):
            expected = "duplicate"  # refused before: refused once
        elif seen is not None:
            expected = "duplicate" if seen == event.body else "anomaly"
        else:
            expected = "applied" if _allowed(state, event) else "anomaly"
        n_applied, n_anomalies = len(state.applied), len(state.anomalies)

        evolve(state, event)

        grew = (len(state.applied) - n_applied, len(state.anomalies) - n_anomalies)
        actual = {(1, 0): "applied", (0, 1): "anomaly", (0, 0): "duplicate"}[grew]
        assert actual == expected, (event, run_before, chunks_before)
        outcomes[actual] += 1
        if actual != "applied":
            assert _view(state) == view_before, f"{actual} {event} changed the state"
            continue
        # an applied event moves the run along exactly one entry of the run table ...
        assert RUN_TRANSITIONS[(run_before, _run_trigger(event))] is state.status
        # ... and each chunk along one entry of the chunk table, or not at all
        body = event.body
        for i, chunk in state.chunks.items():
            if i not in chunks_before:
                assert isinstance(body, ev.PlanResolved) and chunk.status is ev.ChunkStatus.PENDING
            elif isinstance(body, CHUNK_BODIES) and body.chunk_index == i:
                assert CHUNK_TRANSITIONS[(chunks_before[i], _chunk_trigger(body))] is chunk.status
            elif isinstance(body, ev.RunCompleted) and body.status is ev.RunStatus.CANCELED:
                if chunk.status is not chunks_before[i]:
                    assert CHUNK_TRANSITIONS[(chunks_before[i], "cancel")] is chunk.status
            else:
                assert chunk.status is chunks_before[i], f"{event} moved chunk {i}"
    return state, outcomes


def _outcome(state: RunState) -> tuple[Any, ...]:
    """What a run comes to: status, chunks, files and manifest."""
    return (
        state.status,
        state.chunks,
        [f.file_name for f in state.committed_files()],
        [f.file_name for f in state.all_files()],
        state.manifest,
        state.completion,
    )


# ---- fold properties --------------------------------------------------------------------------


@FOLD
@given(perturbed_histories())
def test_every_step_of_any_replay_is_an_entry_of_the_transition_tables(
    events: list[ev.RunEvent],
) -> None:
    state, outcomes = replay(events)
    # every event is applied, recorded as an anomaly, or recognised as an exact duplicate
    assert outcomes["applied"] + outcomes["anomaly"] + outcomes["duplicate"] == len(events)
    assert outcomes["applied"] == len(state.applied)
    assert outcomes["anomaly"] == len(state.anomalies)
    assert fold(events) == state  # replay() is fold() plus checks


@FOLD
@given(run_histories())
def test_a_history_as_the_services_append_it_records_only_fenced_facts_as_anomalies(
    events: list[ev.RunEvent],
) -> None:
    state, _ = replay(events)
    fenced = {"chunk_started", "file_written", "chunk_completed", "chunk_failed"}
    for a in state.anomalies:
        assert a.kind in fenced, a
        body = next(e.body for e in events if e.event_id == a.event_id)
        assert isinstance(body, CHUNK_BODIES)
        chunk = state.chunks[body.chunk_index]
        assert chunk.status is ev.ChunkStatus.COMPLETED and body.attempt != chunk.winning_attempt
    for f in state.committed_files():
        assert f.attempt == state.chunks[f.chunk_index].winning_attempt


@FOLD
@given(perturbed_histories())
def test_applying_a_history_twice_changes_nothing(events: list[ev.RunEvent]) -> None:
    # whatever the order: a fact applied or refused once is not applied or refused again
    assert fold(events + events) == fold(events)


@FOLD
@given(st.data())
def test_a_redelivery_of_an_applied_event_anywhere_later_changes_nothing(
    data: st.DataObject,
) -> None:
    events = data.draw(perturbed_histories())
    state = RunState(run_id=RUN)
    applied_at: dict[str, int] = {}  # event_id -> the position where it took effect
    for i, e in enumerate(events):
        evolve(state, e)
        if e.event_id in state.applied and e.event_id not in applied_at:
            applied_at[e.event_id] = i
    copies = data.draw(
        st.lists(st.sampled_from(sorted(applied_at)), min_size=1, max_size=8).flatmap(
            lambda ids: st.tuples(
                *(st.tuples(st.integers(applied_at[i] + 1, len(events)), st.just(i)) for i in ids)
            )
        )
    )
    mixed = list(events)
    for at, event_id in sorted(copies, reverse=True):  # from the back: positions stay valid
        mixed.insert(at, events[applied_at[event_id]])
    assert len(mixed) == len(events) + len(copies)
    assert fold(mixed) == state


# ---- the tracker projection ------------------------------------------------------------------


def _as_run(events: Sequence[ev.RunEvent], run_id: str) -> list[ev.RunEvent]:
    """The same history under another run id (event ids are prefixed by the run id)."""
    return [
        dataclasses.replace(e, run_id=run_id, event_id=run_id + e.event_id[len(RUN) :])
        for e in events
    ]


def _messages(events: Sequence[ev.RunEvent], first_seq: int = 1) -> list[RawMessage]:
    return [
        RawMessage(first_seq + i, f"t.runs.{e.run_id}.{e.kind}", codec.encode(e))
        for i, e in enumerate(events)
    ]


def _batches(draw: st.DrawFn, msgs: list[RawMessage]) -> list[list[RawMessage]]:
    """`msgs` cut into one to three consecutive batches (the tracker applies what it fetched)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(msgs) - 1)), max_size=2)))
    bounds = [0, *cuts, len(msgs)]
    return [msgs[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def _tables(store: TrackerStore) -> dict[str, list[dict[str, Any]]]:
    return {name: store.table(name) for name in (*TABLES, "projection_offset")}


def _of_run(tables: dict[str, list[dict[str, Any]]], run_id: str) -> dict[str, Any]:
    return {t: [r for r in rows if r.get("run_id") == run_id] for t, rows in tables.items()}


def _without(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


@PROJECTION
@given(st.data())
def test_the_projection_fed_a_history_twice_yields_the_tables_of_feeding_it_once(
    data: st.DataObject,
) -> None:
    """Two runs share one stream: `p`, perturbed (shuffled, duplicated, conflicting ids), and
    `q`, as the services append it with redeliveries. (1) The whole stream re-delivered at the
    same seqs changes no row. (2) `q`'s events re-published at new seqs (a retried publish after
    the duplicate window) are journaled at their seqs, and nothing else changes (a fenced fact
    is not a second anomaly); `p`'s rows are untouched by another run's messages."""
    p = _as_run(data.draw(perturbed_histories()), "p")
    q = _as_run(data.draw(run_histories().flatmap(redelivered)), "q")
    picks = data.draw(st.permutations([0] * len(p) + [1] * len(q)))
    queues = [list(p), list(q)]
    msgs = _messages([queues[i].pop(0) for i in picks])
    n = len(msgs)
    store = TrackerStore(":memory:")  # DuckDB in memory: the same SQL as a file
    try:
        for batch in _batches(data.draw, msgs):
            store.apply(batch)
        once = _tables(store)

        # the tracker's rows are the fold's
        for run_id, events in (("p", p), ("q", q)):
            state = fold(events)
            rows = _of_run(once, run_id)
            assert [r["status"] for r in rows["runs"]] == [state.status.value]
            assert [(a["event_id"], a["kind"]) for a in rows["anomalies"]] == [
                (a.event_id, a.kind) for a in state.anomalies
            ]
            assert [r["file_name"] for r in rows["parts"] if r["committed"]] == [
                f.file_name for f in state.committed_files()
            ]
        assert len(once["events"]) == n and once["projection_offset"] == [{"seq": n}]

        # (1) the same seqs again, cut differently, starting anywhere before the offset
        redelivery = msgs[data.draw(st.integers(0, n - 1)) :] + msgs
        for batch in _batches(data.draw, redelivery):
            assert store.apply(batch) == n
        assert _tables(store) == once

        # (2) q's events again, at new seqs
        for batch in _batches(data.draw, _messages(q, first_seq=n + 1)):
            store.apply(batch)
        twice = _tables(store)
    finally:
        store.close()

    assert _of_run(twice, "p") == _of_run(once, "p")
    before, after = _of_run(once, "q"), _of_run(twice, "q")
    for table in ("chunks", "parts", "quality_issues", "schema_changes"):
        assert after[table] == before[table], table
    assert _without(after["runs"], "last_seq") == _without(before["runs"], "last_seq")
    assert [r["last_seq"] for r in after["runs"]] == [n + len(q)]
    journal = after["events"]
    assert journal[: len(before["events"])] == before["events"]
    assert [_without([r], "seq") for r in journal[len(before["events"]) :]] == [
        _without([r], "seq") for r in _of_run(once, "q")["events"]
    ]
    assert [r["seq"] for r in journal[len(before["events"]) :]] == list(
        range(n + 1, n + len(q) + 1)
    )
    assert after["anomalies"] == before["anomalies"]
    assert twice["projection_offset"] == [{"seq": n + len(q)}]
