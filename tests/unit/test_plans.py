"""Sealed plans (`plan -o` / `apply`): canonical form, tamper detection, expiry, cursor checks;
and the planner's side of an applied plan (check_applied_plan, pinned_high)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sluiceway.cli import plans
from sluiceway.common.domain.events import ChunkRange, PlanResolved, RowFilter, RunRequested
from sluiceway.planner.domain.chunks import PlanError
from sluiceway.planner.domain.plan import check_applied_plan, pinned_high, plan_id_of
from sluiceway.v1 import control_pb2, events_pb2

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _response(low: str = "10", high: str = "20") -> tuple[control_pb2.PlanRunResponse, Any]:
    spec = events_pb2.ExportSpec(
        name="orders",
        mode="incremental",
        table="orders",
        cursor_column="id",
        destination="/data/out",
        format="parquet",
    )
    spec.source.engine = "postgres"
    spec.source.url_env = "ORDERS_DB_URL"
    resp = control_pb2.PlanRunResponse()
    resp.plan.plan_id = "plan-abc"
    resp.plan.strategy = "incremental"
    resp.plan.row_estimate = 1234
    resp.plan.chunks.add(index=0)
    resp.plan.row_filter.column = "id"
    resp.plan.row_filter.key_type = "int64"
    resp.plan.row_filter.low = low
    resp.plan.row_filter.high = high
    resp.plan.row_filter.high_inclusive = True
    resp.warnings.add(rule="schema_drift", message="column added: note")
    resp.spec.CopyFrom(spec)
    return resp, spec


def _doc(key: bytes | None = None, expires_in: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    resp, spec = _response()
    return plans.build(resp, spec, now=NOW, expires_in=expires_in, key=key)


def test_a_sealed_plan_holds_spec_plan_cursor_and_no_secret() -> None:
    doc = _doc()
    assert doc["plan_id"] == "plan-abc" and doc["export_name"] == "orders"
    assert doc["created_at"] == "2026-05-01T12:00:00Z"
    assert doc["expires_at"] == "2026-05-01T13:00:00Z"
    assert doc["cursor"] == {"column": "id", "low": "10", "high": "20"}
    assert doc["row_estimate"] == 1234
    assert doc["warnings"] == [{"rule": "schema_drift", "message": "column added: note"}]
    assert doc["spec"]["source"] == {"engine": "postgres", "url_env": "ORDERS_DB_URL"}
    assert doc["integrity"].startswith("xxh3:")
    plans.verify_integrity(doc)
    assert plans.spec_of(doc).source.url_env == "ORDERS_DB_URL"
    assert plans.plan_of(doc).row_filter.high == "20"


def test_the_canonical_form_is_stable_across_key_order_and_formatting() -> None:
    doc = _doc()
    shuffled = dict(reversed(list(doc.items())))
    assert plans.canonical(doc) == plans.canonical(shuffled)
    reloaded = plans.loads(plans.dumps(doc))
    assert plans.canonical(reloaded) == plans.canonical(doc)
    plans.verify_integrity(reloaded)
    # the same inputs seal to the same bytes
    assert plans.dumps(_doc()) == plans.dumps(doc)
    # and the canonical form is compact, sorted JSON without the integrity field
    assert plans.canonical(doc).startswith(b'{"created_at":"2026-05-01T12:00:00Z","cursor":')
    assert b"integrity" not in plans.canonical(doc)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return [prefix]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@pytest.mark.parametrize("key", [None, b"secret"])
def test_changing_any_field_is_detected(key: bytes | None) -> None:
    doc = _doc(key)
    leaves = [p for p in _paths(doc) if p != ("integrity",)]
    assert len(leaves) > 20
    for path in leaves:
        forged = json.loads(json.dumps(doc))
        old = _get(forged, path)
        _set(forged, path, (not old) if isinstance(old, bool) else f"{old}x")
        with pytest.raises(plans.PlanRefused) as err:
            plans.verify_integrity(forged, key)
        assert err.value.reason == plans.TAMPERED, path
    # adding or removing a field too
    added = {**doc, "extra": 1}
    removed = {k: v for k, v in doc.items() if k != "warnings"}
    for forged in (added, removed):
        with pytest.raises(plans.PlanRefused):
            plans.verify_integrity(forged, key)


def test_changing_any_byte_of_the_file_is_detected_or_unreadable() -> None:
    text = plans.dumps(_doc()).encode()
    for i in range(len(text)):
        for flip in (0x01, 0x20):
            forged = bytearray(text)
            forged[i] ^= flip
            try:
                doc = plans.loads(forged.decode())
            except (plans.PlanRefused, UnicodeDecodeError):
                continue  # not JSON (or not UTF-8): refused before anything is read
            if doc == json.loads(text):
                continue  # whitespace between tokens: the same document
            with pytest.raises(plans.PlanRefused) as err:
                plans.verify_integrity(doc)
            assert err.value.reason == plans.TAMPERED


def test_a_rewriter_who_recomputes_the_unkeyed_hash_passes_but_not_a_keyed_one() -> None:
    forged = {**_doc(), "row_estimate": 1}
    plans.verify_integrity(plans.seal(forged))  # the documented limit of an unkeyed hash
    keyed = _doc(b"k1")
    assert keyed["integrity"].startswith("hmac-sha256:")
    plans.verify_integrity(keyed, b"k1")
    for forged_doc, key in (
        (plans.seal({**keyed, "row_estimate": 1}), b"k1"),  # re-sealed without the key
        (plans.seal({**keyed, "row_estimate": 1}, b"k2"), b"k1"),  # with another key
        (keyed, None),  # a keyed plan cannot be verified without the key
        (keyed, b"k2"),
    ):
        with pytest.raises(plans.PlanRefused):
            plans.verify_integrity(forged_doc, key)


def test_expiry_refuses_a_stale_plan_unless_forced() -> None:
    doc = _doc(expires_in=timedelta(seconds=1))
    cursor = doc["cursor"]
    assert plans.decide(doc, now=NOW, current_cursor=cursor, force=False) == []
    late = NOW + timedelta(seconds=1)
    with pytest.raises(plans.PlanRefused) as err:
        plans.decide(doc, now=late, current_cursor=cursor, force=False)
    assert err.value.reason == plans.STALE and "expired at 2026-05-01T12:00:01Z" in str(err.value)
    assert plans.decide(doc, now=late, current_cursor=cursor, force=True) == [plans.STALE]


def test_a_moved_cursor_is_refused_unless_forced_and_new_rows_alone_are_not_a_move() -> None:
    doc = _doc()
    more_rows = {"column": "id", "low": "10", "high": "99"}
    assert not plans.cursor_moved(doc["cursor"], more_rows)
    assert plans.decide(doc, now=NOW, current_cursor=more_rows, force=False) == []
    moved = {"column": "id", "low": "20", "high": "25"}
    assert plans.cursor_moved(doc["cursor"], moved)
    assert plans.cursor_moved(doc["cursor"], None) and plans.cursor_moved(None, moved)
    assert not plans.cursor_moved(None, None)
    with pytest.raises(plans.PlanRefused) as err:
        plans.decide(doc, now=NOW, current_cursor=moved, force=False)
    assert err.value.reason == plans.CURSOR_MOVED and "after 10" in str(err.value)
    late = NOW + timedelta(days=1)
    assert plans.decide(doc, now=late, current_cursor=moved, force=True) == [
        plans.STALE,
        plans.CURSOR_MOVED,
    ]


def test_a_tampered_plan_is_refused_even_with_force() -> None:
    forged = {**_doc(), "expires_at": "2099-01-01T00:00:00Z"}
    with pytest.raises(plans.PlanRefused) as err:
        plans.decide(forged, now=NOW, current_cursor=forged["cursor"], force=True)
    assert err.value.reason == plans.TAMPERED
    for text in ("not json", "[1, 2]", "{}"):
        with pytest.raises(plans.PlanRefused):
            plans.verify_integrity(plans.loads(text))


def test_submit_options_carry_plan_id_force_bypass_and_the_cursor() -> None:
    doc = _doc()
    assert plans.submit_options(doc, force=True, bypassed=["stale", "cursor_moved"]) == {
        "plan_id": "plan-abc",
        "force": "true",
        "bypass": "stale,cursor_moved",
        "cursor_low": "10",
        "cursor_high": "20",
    }
    doc = {**doc, "cursor": None}
    assert plans.submit_options(doc, force=False, bypassed=[]) == {
        "plan_id": "plan-abc",
        "force": "false",
    }


def test_parse_duration() -> None:
    assert plans.parse_duration("1s") == timedelta(seconds=1)
    assert plans.parse_duration("15m") == timedelta(minutes=15)
    assert plans.parse_duration("24h") == timedelta(days=1)
    assert plans.parse_duration("7d") == timedelta(days=7)
    for bad in ("", "0s", "1w", "-1s", "1.5h", "h"):
        with pytest.raises(ValueError):
            plans.parse_duration(bad)


# ---- the planner's side ---------------------------------------------------------------------


def _plan(low: str, high: str, schema_fp: str = "fp1", chunks: int = 1) -> PlanResolved:
    rf = RowFilter(column="id", key_type="int64", low=low, high=high, high_inclusive=True)
    plan = PlanResolved(
        strategy="incremental",
        chunks=tuple(ChunkRange(index=i) for i in range(chunks)),
        schema_fingerprint=schema_fp,
        row_filter=rf,
    )
    return dataclasses.replace(plan, plan_id=plan_id_of(plan))


def _requested(plan_id: str, **options: str) -> RunRequested:
    return RunRequested(plan_id=plan_id, options={"plan_id": plan_id, **options})


def test_an_applied_plan_reads_its_sealed_range_while_the_cursor_has_not_moved() -> None:
    opts = {"cursor_low": "10", "cursor_high": "20"}
    assert pinned_high(RowFilter(column="id", low="10"), opts) == "20"
    assert pinned_high(RowFilter(column="id", low="20"), opts) == ""  # moved: bound at max
    assert pinned_high(RowFilter(column="id", low="10"), {}) == ""  # not an applied plan


def test_the_planner_refuses_an_applied_plan_that_plans_otherwise() -> None:
    sealed = _plan("10", "20")
    opts = {"cursor_low": "10", "cursor_high": "20"}
    check_applied_plan(_requested(sealed.plan_id, **opts), sealed)  # the same plan
    check_applied_plan(RunRequested(), _plan("30", "40"))  # not pinned
    drifted = _plan("10", "20", schema_fp="fp2")
    with pytest.raises(PlanError, match="source changed"):
        check_applied_plan(_requested(sealed.plan_id, **opts), drifted)
    moved = _plan("20", "30")
    with pytest.raises(PlanError, match="cursor moved"):
        check_applied_plan(_requested(sealed.plan_id, **opts), moved)
    with pytest.raises(PlanError, match="cursor moved"):
        check_applied_plan(_requested(sealed.plan_id, force="true", bypass="stale", **opts), moved)


def test_forced_past_a_moved_cursor_only_the_row_filter_may_differ() -> None:
    sealed = _plan("10", "20")
    forced = {"cursor_low": "10", "cursor_high": "20", "force": "true", "bypass": "cursor_moved"}
    req = _requested(sealed.plan_id, **forced)
    check_applied_plan(req, _plan("20", "30"))  # from the current cursor
    check_applied_plan(req, _plan("20", "", chunks=0))  # nothing new: the run skips
    with pytest.raises(PlanError, match="source changed"):
        check_applied_plan(req, _plan("20", "30", schema_fp="fp2"))
