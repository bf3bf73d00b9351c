"""What a commit says the run covered: the cursor range of an incremental run, else key bounds."""

from __future__ import annotations

from sluiceway.common.domain.events import ExportSpec, PlanResolved, cursor_name


def cursor_of(spec: ExportSpec, plan: PlanResolved) -> dict[str, str]:
    """What ManifestCommitted says the run covered. An incremental run: the cursor range it
    read (after `cursor_low`, up to and with `cursor_high`); committing it is what advances the
    export's cursor. Any other run: the chunk key's bounds."""
    rf = plan.row_filter
    if spec.mode == "incremental" and rf is not None:
        name = cursor_name(rf.column, rf.fallbacks)
        return {"cursor_column": name, "cursor_low": rf.low, "cursor_high": rf.high}
    return {"cursor_column": "", "cursor_low": plan.key_low, "cursor_high": plan.key_high}
