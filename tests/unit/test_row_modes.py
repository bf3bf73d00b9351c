"""Incremental and time-window runs: the pure decisions, the SQL filter and the config keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from sluiceway.common.config import ConfigError, load_text
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import fold
from sluiceway.common.sources.base import SourceError
from sluiceway.common.sources.sql import filter_terms, relation
from sluiceway.planner.domain.plan import (
    Skip,
    SkipRun,
    bound_incremental,
    decide_request,
    incremental_filter,
    skip_plan,
    window_filter,
)

from .histories import History

SPEC = ev.ExportSpec(
    name="changes",
    source=ev.SourceSpec(engine="postgres", url_env="U"),
    table="public.changes",
    mode="incremental",
    cursor_column="updated_at",
)
TSTZ = "timestamp[us, tz=UTC]"


def test_the_first_incremental_run_reads_every_row() -> None:
    rf = incremental_filter(SPEC, TSTZ, None)
    assert rf == ev.RowFilter(column="updated_at", key_type=TSTZ)


def test_the_next_run_reads_strictly_after_the_committed_cursor() -> None:
    committed = ev.ManifestCommitted(cursor_column="updated_at", cursor_high="2026-03-01")
    rf = incremental_filter(SPEC, TSTZ, committed)
    assert rf.low == "2026-03-01" and not rf.low_inclusive
    bounded = bound_incremental(rf, "2026-03-02T00:00:00+00:00")
    assert isinstance(bounded, ev.RowFilter)
    assert bounded.high == "2026-03-02T00:00:00+00:00" and bounded.high_inclusive


def test_a_commit_on_another_column_is_no_cursor() -> None:
    # the export was chunked before, or its cursor column changed: start over
    committed = ev.ManifestCommitted(cursor_column="", cursor_high="1000")
    assert incremental_filter(SPEC, "int64", committed).low == ""


def test_nothing_above_the_cursor_skips_with_a_reason() -> None:
    rf = ev.RowFilter(column="updated_at", key_type=TSTZ, low="2026-03-01T00:00:00+00:00")
    skip = bound_incremental(rf, None)
    assert skip == Skip("no new rows since cursor 'updated_at' = 2026-03-01T00:00:00+00:00")
    assert isinstance(bound_incremental(replace(rf, low=""), None), Skip)


def test_a_skipped_plan_has_no_chunk_and_a_restart_ends_the_run_skipped() -> None:
    rf = ev.RowFilter(column="updated_at", key_type=TSTZ, low="5")
    plan = skip_plan(ev.PlanResolved(plan_id="p", chunks=(ev.ChunkRange(0),), row_filter=rf))
    assert plan.chunks == () and plan.plan_id != "p"
    # a crash between that plan and its RunCompleted: the redelivered request ends the run
    h = History().add(ev.RunRequested(spec=SPEC)).add(plan)
    decision = decide_request(fold(h.events))
    assert decision == SkipRun("no new rows since cursor 'updated_at' = 5")


@pytest.mark.parametrize(
    ("key_type", "low"),
    [
        ("date32[day]", "2026-11-19"),
        ("timestamp[us]", "2026-11-19T00:00:00"),
        (TSTZ, "2026-11-19T00:00:00+00:00"),
    ],
)
def test_a_window_starts_at_midnight_utc_n_days_ago(key_type: str, low: str) -> None:
    spec = replace(SPEC, mode="time_window", cursor_column="", time_column="at", days_window=3)
    now = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    rf = window_filter(spec, key_type, now)
    assert rf == ev.RowFilter(column="at", key_type=key_type, low=low, low_inclusive=True)


def test_the_row_filter_is_parsed_and_rewritten_never_pasted() -> None:
    rf = ev.RowFilter(
        column="updated_at",
        key_type=TSTZ,
        low="2026-03-01T00:00:00+00:00",
        high="2026-03-02T10:00:00+00:00",
        high_inclusive=True,
    )
    assert filter_terms(rf, "postgres") == [
        "\"updated_at\" > '2026-03-01T00:00:00+00:00'::timestamptz",
        "\"updated_at\" <= '2026-03-02T10:00:00+00:00'::timestamptz",
    ]
    sqlite = filter_terms(rf, "sqlite")
    assert sqlite[0].endswith("> julianday('2026-03-01T00:00:00+00:00')")
    spec = replace(SPEC, row_filter=rf)
    assert relation(spec).startswith('(SELECT * FROM "public"."changes" WHERE "updated_at" >')
    assert filter_terms(replace(rf, key_type="int64", low="41", high=""), "postgres") == [
        '"updated_at" > 41'
    ]
    for evil in ("1; DROP TABLE x", "2026-01-01' OR '1'='1"):
        with pytest.raises(SourceError):
            filter_terms(replace(rf, low=evil), "postgres")
        with pytest.raises(SourceError):
            filter_terms(replace(rf, key_type="int64", low=evil), "postgres")


BASE = """
sources: {{s: {{engine: postgres, url_env: U}}}}
exports:
  - name: e
    source: s
    table: t
    destination: /out
{extra}
"""


def _load(extra: str) -> ev.ExportSpec:
    return load_text(BASE.format(extra=extra))["e"]


def test_the_modes_load_with_their_keys() -> None:
    spec = _load("    mode: incremental\n    cursor_column: updated_at")
    assert spec.mode == "incremental" and spec.cursor_column == "updated_at"
    spec = _load("    mode: time_window\n    time_column: at\n    days_window: 7")
    assert (spec.time_column, spec.days_window) == ("at", 7)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("    mode: incremental", "cursor_column"),
        ("    mode: time_window\n    time_column: at", "days_window"),
        ("    mode: time_window\n    days_window: 2", "time_column"),
        ("    mode: full\n    cursor_column: updated_at", "cursor_column"),
        ("    mode: incremental\n    cursor_column: a.b", "cursor_column"),
        ("    mode: time_window\n    time_column: at\n    days_window: 99999", "days_window"),
        ("    mode: incremental\n    cursor_column: u\n    days_window: 2", "days_window"),
    ],
)
def test_mode_keys_are_checked_by_name(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(extra)
    assert err.value.field == field and err.value.export == "e"


def test_a_client_cannot_set_the_row_filter() -> None:
    from sluiceway.common.config import check_spec

    spec = replace(_load(""), row_filter=ev.RowFilter(column="id", low="0"))
    with pytest.raises(ConfigError) as err:
        check_spec(spec)
    assert err.value.field == "row_filter"


# ---- schema drift ------------------------------------------------------------------------------


def _fields(*pairs: tuple[str, str]) -> tuple[ev.SchemaField, ...]:
    return tuple(ev.SchemaField(name=n, type=t) for n, t in pairs)


def test_drift_names_what_was_added_removed_and_retyped() -> None:
    from sluiceway.planner.domain.plan import drift_message, schema_drift

    before = _fields(("id", "int64"), ("v", "string"), ("gone", "int32"))
    now = _fields(("id", "int64"), ("v", "int32"), ("new", "bool"))
    change = schema_drift(before, now)
    assert change == ev.SchemaChanged(
        added=("new",), removed=("gone",), type_changed=("v: string -> int32",)
    )
    assert drift_message(change) == (
        "schema drift since the last committed run: added new; removed gone; "
        "type changed v: string -> int32"
    )
    assert schema_drift(None, now) is None  # no committed run yet: no baseline
    assert schema_drift(now, now) is None


@pytest.mark.parametrize(
    ("policy", "kinds"),
    [("warn", ["warning"]), ("", ["warning"]), ("continue", []), ("fail", ["completed"])],
)
def test_the_policy_decides_what_follows_a_drift(policy: str, kinds: list[str]) -> None:
    from sluiceway.common.domain.events import kind_of
    from sluiceway.planner.domain.plan import drift_outcome

    change = ev.SchemaChanged(added=("x",))
    state = fold(History().add(ev.RunRequested(spec=SPEC)).events)
    out = drift_outcome(replace(SPEC, schema_policy=policy), change, state, datetime.now(UTC))
    assert [kind_of(b) for b in out] == kinds
    if policy == "fail":
        assert out[0].status is ev.RunStatus.FAILED  # type: ignore[union-attr]


def test_a_run_failed_by_drift_maps_to_the_schema_drift_cause() -> None:
    from sluiceway.tracker.domain.summary import failure_cause

    h = History().add(ev.RunRequested(spec=SPEC)).add(ev.SchemaChanged(removed=("v",)))
    h.add(ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="schema drift"))
    state = fold(h.events)
    assert state.anomalies == [] and failure_cause(state) == "schema_drift"


# ---- quality rules -----------------------------------------------------------------------------


def test_each_broken_quality_rule_is_one_issue_with_the_rules_severity() -> None:
    from sluiceway.committer.domain.gates import QualityObserved, quality_issues

    rules = ev.QualityRules(
        row_count_min=10,
        row_count_max=1000,
        null_ratio_max={"email": 0.1, "name": 0.5},
        unique_columns=("id", "email"),
    )
    seen = QualityObserved(rows=8, nulls={"email": 1, "name": 4}, duplicates={"id": 0, "email": 2})
    issues = quality_issues(rules, seen)
    assert [(i.severity, i.rule) for i in issues] == [
        (ev.Severity.FAIL, "row_count_min"),
        (ev.Severity.FAIL, "null_ratio_max"),
        (ev.Severity.FAIL, "unique_columns"),
    ]
    assert "'email': 12.5000% of rows are NULL" in issues[1].message
    assert "'email': 2 repeated value(s)" in issues[2].message
    warned = quality_issues(replace(rules, on_violation="warn"), seen)
    assert {i.severity for i in warned} == {ev.Severity.WARN}
    ok = QualityObserved(rows=10, nulls={"email": 1, "name": 5}, duplicates={"id": 0, "email": 0})
    assert quality_issues(rules, ok) == []


def test_a_failed_quality_rule_fails_the_run_and_maps_to_exit_code_3() -> None:
    from sluiceway.committer.domain.decide import Fail, decide
    from sluiceway.tracker.domain.summary import failure_cause

    h = History().planned(1).chunk_done(0)
    h.add(ev.ValidationResult(passed=True))
    h.add(ev.QualityIssue(ev.Severity.FAIL, "row_count_min", "8 row(s), at least 10 required"))
    decision = decide(fold(h.events))
    assert isinstance(decision, Fail) and "row_count_min" in decision.error_message
    h.add(ev.RunCompleted(status=ev.RunStatus.FAILED, error_message=decision.error_message))
    assert failure_cause(fold(h.events)) == "quality"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("    quality: {row_count_min: 5, row_count_max: 4}", "quality.row_count_min"),
        ("    quality: {null_ratio_max: {email: 1.5}}", "quality.null_ratio_max.email"),
        ("    quality: {unique_columns: ['a b']}", "quality.unique_columns"),
        ("    quality: {on_violation: ignore}", "quality.on_violation"),
    ],
)
def test_quality_rules_are_checked_by_name(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(extra)
    assert err.value.field == field


def test_incremental_and_window_rows_may_be_chunked_on_a_named_column() -> None:
    spec = _load(
        "    mode: incremental\n    cursor_column: u\n    chunk_column: id\n    chunk_size: 10"
    )
    assert ev.is_chunked(spec) and spec.chunk_size == 10
    assert not ev.is_chunked(_load("    mode: incremental\n    cursor_column: u"))
    with pytest.raises(ConfigError) as err:  # a full export has no key ranges
        _load("    mode: full\n    chunk_column: id\n    chunk_size: 10")
    assert err.value.field == "mode"
    with pytest.raises(ConfigError) as err:  # chunked rows need exactly one way to cut them
        _load(
            "    mode: time_window\n    time_column: at\n    days_window: 2\n    chunk_column: id"
        )
    assert err.value.field == "chunk_size"
