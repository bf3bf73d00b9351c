"""Sealed plans: `sluiceway plan -o FILE` writes one, `sluiceway apply FILE` runs it.

A plan file is JSON: the resolved export spec (it names url_env variables, never a URL or a
secret), the planner's plan (chunk ranges, schema, row filter), the cursor snapshot of an
incremental export (the plan's RowFilter low/high), the row estimate, the warnings, when it was
made and when it expires, and `integrity`: a digest over the canonical form of all the rest
(keys sorted, no whitespace, UTF-8).

Threat model. Unkeyed (`xxh3:`), the digest detects corruption and hand edits of a plan file; it
does not stop someone who edits the file *and* recomputes the digest (the algorithm is public).
With SLUICEWAY_PLAN_KEY set on both sides, the digest is an HMAC-SHA256 (`hmac-sha256:`): only
a holder of the key can produce a plan that verifies, and with the key set an unkeyed plan is
refused (no downgrade). Either way the planner re-plans the run and refuses it unless it plans
as the sealed plan_id (apply --force only relaxes the cursor check, never the rest), so a
rewritten plan cannot make a run read other rows or another schema than the source plans.

Everything here is pure (time and keys are passed in) except the protobuf conversions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format

from sluiceway.common import fingerprint
from sluiceway.v1 import control_pb2, events_pb2

FORMAT = "sluiceway.plan/1"
DEFAULT_EXPIRES_IN = "24h"
KEY_ENV = "SLUICEWAY_PLAN_KEY"

TAMPERED = "tampered"
STALE = "stale"
CURSOR_MOVED = "cursor_moved"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PlanRefused(Exception):
    """apply will not run this plan; `reason` is one of TAMPERED, STALE, CURSOR_MOVED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d` (a positive whole number and one unit)."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 24h or 7d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def canonical(content: Mapping[str, Any]) -> bytes:
    """The bytes the integrity digest covers: every field but `integrity`, keys sorted."""
    body = {k: v for k, v in content.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(content: Mapping[str, Any], key: bytes | None) -> str:
    data = canonical(content)
    if key:
        return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()
    return fingerprint.of_bytes(data)  # "xxh3:<hex>"


def seal(content: Mapping[str, Any], key: bytes | None = None) -> dict[str, Any]:
    out = {k: v for k, v in content.items() if k != "integrity"}
    out["integrity"] = digest(out, key)
    return out


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("no time zone")
    return dt


def _dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def cursor_of(plan: events_pb2.PlanResolved, mode: str) -> dict[str, str] | None:
    """The cursor snapshot of an incremental plan: its row filter's column and (low, high]."""
    if mode != "incremental" or not plan.HasField("row_filter"):
        return None
    rf = plan.row_filter
    return {"column": rf.column, "low": rf.low, "high": rf.high}


def build(
    resp: control_pb2.PlanRunResponse,
    spec: events_pb2.ExportSpec,
    *,
    now: datetime,
    expires_in: timedelta,
    key: bytes | None = None,
) -> dict[str, Any]:
    """The sealed plan document of a PlanRun answer for `spec` (the resolved export)."""
    plan = resp.plan
    content: dict[str, Any] = {
        "format": FORMAT,
        "plan_id": plan.plan_id,
        "export_name": spec.name,
        "created_at": _iso(now),
        "expires_at": _iso(now + expires_in),
        "spec": _dict(spec),
        "plan": _dict(plan),
        "cursor": cursor_of(plan, spec.mode),
        "row_estimate": int(plan.row_estimate),
        "warnings": [{"rule": w.rule, "message": w.message} for w in resp.warnings],
    }
    return seal(content, key)


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def loads(text: str) -> dict[str, Any]:
    """Parse a plan file; anything that is not a JSON object is refused as tampered."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise PlanRefused(TAMPERED, "the plan file is not JSON (corrupt or tampered)") from None
    if not isinstance(doc, dict):
        raise PlanRefused(TAMPERED, "the plan file is not a JSON object (corrupt or tampered)")
    return doc


def verify_integrity(doc: Mapping[str, Any], key: bytes | None = None) -> None:
    """Raises PlanRefused(TAMPERED) unless `integrity` matches the rest of the document."""
    found = doc.get("integrity")
    if not isinstance(found, str) or not found:
        raise PlanRefused(TAMPERED, "the plan has no integrity hash (tampered or not a plan)")
    if key and not found.startswith("hmac-sha256:"):
        raise PlanRefused(TAMPERED, f"{KEY_ENV} is set but the plan is not sealed with a key")
    if found.startswith("hmac-sha256:") and not key:
        raise PlanRefused(TAMPERED, f"the plan is sealed with a key: set {KEY_ENV} to verify it")
    if not hmac.compare_digest(found, digest(doc, key)):
        raise PlanRefused(TAMPERED, "the plan's integrity hash does not match its content")
    if doc.get("format") != FORMAT:
        raise PlanRefused(TAMPERED, f"unknown plan format {doc.get('format')!r}")
    for field in ("plan_id", "export_name", "created_at", "expires_at"):
        if not isinstance(doc.get(field), str) or not doc.get(field):
            raise PlanRefused(TAMPERED, f"the plan's {field} is missing")
    if not isinstance(doc.get("spec"), dict) or not isinstance(doc.get("plan"), dict):
        raise PlanRefused(TAMPERED, "the plan's spec or plan is missing")


def expired(doc: Mapping[str, Any], now: datetime) -> bool:
    try:
        return now >= _parse_iso(str(doc["expires_at"]))
    except (KeyError, ValueError):
        return True


def cursor_moved(sealed: Mapping[str, str] | None, current: Mapping[str, str] | None) -> bool:
    """The export's committed cursor (the low end of the run's rows) is not the one planned
    over: another run committed since. Only the low end counts: rows that arrived since are
    above the sealed high and are the next run's."""
    if sealed is None and current is None:
        return False
    if sealed is None or current is None:
        return True
    return (sealed.get("column"), sealed.get("low")) != (current.get("column"), current.get("low"))


def decide(
    doc: Mapping[str, Any],
    *,
    now: datetime,
    current_cursor: Mapping[str, str] | None,
    force: bool,
    key: bytes | None = None,
) -> list[str]:
    """The checks of `apply`, in order. Returns what --force bypassed; raises PlanRefused.
    A tampered plan is refused even with --force."""
    verify_integrity(doc, key)
    bypassed: list[str] = []
    if expired(doc, now):
        if not force:
            raise PlanRefused(
                STALE, f"the plan expired at {doc['expires_at']} (plan again, or --force)"
            )
        bypassed.append(STALE)
    if cursor_moved(doc.get("cursor"), current_cursor):
        if not force:
            sealed = (doc.get("cursor") or {}).get("low") or "(start)"
            now_low = (current_cursor or {}).get("low") or "(start)"
            raise PlanRefused(
                CURSOR_MOVED,
                f"the export's cursor moved since planning (planned after {sealed}, "
                f"now after {now_low}): plan again, or --force",
            )
        bypassed.append(CURSOR_MOVED)
    return bypassed


def spec_of(doc: Mapping[str, Any]) -> events_pb2.ExportSpec:
    spec = events_pb2.ExportSpec()
    json_format.ParseDict(doc["spec"], spec)
    return spec


def plan_of(doc: Mapping[str, Any]) -> events_pb2.PlanResolved:
    plan = events_pb2.PlanResolved()
    json_format.ParseDict(doc["plan"], plan)
    return plan


def submit_options(doc: Mapping[str, Any], *, force: bool, bypassed: list[str]) -> dict[str, str]:
    """RunRequested.options of an applied plan (the planner pins the run to plan_id; the
    tracker reads plan_id / force / bypass into RunSummary.apply_context)."""
    options = {"plan_id": str(doc["plan_id"]), "force": "true" if force else "false"}
    if bypassed:
        options["bypass"] = ",".join(bypassed)
    cursor = doc.get("cursor")
    if isinstance(cursor, dict):
        options["cursor_low"] = str(cursor.get("low", ""))
        options["cursor_high"] = str(cursor.get("high", ""))
    return options
