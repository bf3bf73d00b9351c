"""Whether an ended run is worth a webhook notification, and what it says. Pure.

A run is notified when it failed, when its schema changed against the export's last
committed run, or when it succeeded degraded (a quality issue or a warning on the way). A
clean success, a skip and a cancel are not: an operator cancelled it, and knows.

The payload carries what the run's events carry and nothing else: names, counts, statuses and
the (already redacted) messages; never a row value or a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluiceway.common.domain.events import RunStatus
from sluiceway.common.domain.run import RunState

FAILED = "failed"
SCHEMA_CHANGED = "schema_changed"
DEGRADED = "degraded"
REASONS = (FAILED, SCHEMA_CHANGED, DEGRADED)
SCHEMA_DRIFT_RULE = "schema_drift"
SCHEMA_CONTEXT = "schema"  # the Warning of a drift under schema_policy warn
MAX_MESSAGES = 20  # messages of each kind in one notification
VERSION = 1


@dataclass(frozen=True)
class Notice:
    reasons: tuple[str, ...]
    payload: dict[str, Any]


def reasons_of(state: RunState) -> tuple[str, ...]:
    """The notification's reasons for an ended run, in REASONS order; () for none."""
    out: list[str] = []
    if state.status is RunStatus.FAILED:
        out.append(FAILED)
    drift = any(w.rule == SCHEMA_DRIFT_RULE for w in state.plan_warnings)
    if state.schema_changes or drift:
        out.append(SCHEMA_CHANGED)
    # the drift's own warning (schema_policy warn) is the change, not a degradation
    other = [w for w in state.warnings if w.context != SCHEMA_CONTEXT]
    if state.status is RunStatus.SUCCEEDED and (state.quality_issues or other):
        out.append(DEGRADED)
    return tuple(out)


def notice_of(state: RunState, wanted: frozenset[str] = frozenset(REASONS)) -> Notice | None:
    """The notification of an ended run, or None when it has no reason in `wanted`."""
    if not state.terminal:
        return None
    reasons = tuple(r for r in reasons_of(state) if r in wanted)
    if not reasons:
        return None
    completion = state.completion
    payload: dict[str, Any] = {
        "version": VERSION,
        "event": f"run.{reasons[0]}",
        "reasons": list(reasons),
        "run_id": state.run_id,
        "export": state.export_name,
        "status": state.status.value,
        "error_message": completion.error_message if completion else "",
        "finished_at": state.finished_at.isoformat() if state.finished_at else "",
        "rows": state.total_rows,
        "chunks": len(state.chunks),
        "manifest_fingerprint": state.manifest.fingerprint if state.manifest else "",
        "schema_changes": [
            {
                "added": list(c.added),
                "removed": list(c.removed),
                "type_changed": list(c.type_changed),
            }
            for c in state.schema_changes
        ],
        "warnings": [
            {"context": w.context, "message": w.message} for w in state.warnings[:MAX_MESSAGES]
        ]
        + [{"context": w.rule, "message": w.message} for w in state.plan_warnings[:MAX_MESSAGES]],
        "quality_issues": [
            {"severity": q.severity.value, "rule": q.rule, "message": q.message}
            for q in state.quality_issues[:MAX_MESSAGES]
        ],
    }
    return Notice(reasons, payload)
