"""`sluiceway validate PATH`: check a committed run (on disk or in an s3:// object store) against
its manifest."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from sluiceway.common.verifier import CannotCheck, Report, verify_path

EXIT_OK = 0
EXIT_CANNOT_CHECK = 1  # PATH missing, not a manifest, unreadable JSON, permission, unreachable
EXIT_DATA = 3  # the data is wrong: at least one failure code
SHOWN = 20  # failures listed in the human report; --json lists every one


def run(path: str, *, as_json: bool, depth: str = "files") -> tuple[int, str]:
    """(exit code, text for stdout). CannotCheck propagates: the caller prints it (exit 1)."""
    report = verify_path(path, depth=depth)
    code = EXIT_OK if report.passed else EXIT_DATA
    return code, (to_json(report) if as_json else to_text(report))


def to_dict(report: Report) -> dict[str, Any]:
    d = asdict(report)
    d["passed"] = report.passed
    d["codes"] = sorted({f.code for f in report.failures})
    return d


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=True)


def to_text(report: Report) -> str:
    what = "latest pointer of" if report.kind == "latest" else "run"
    head = (
        f"{what} {report.export_name}/{report.run_id}: {report.parts} part(s), "
        f"{report.rows} row(s), {report.bytes} byte(s), {report.format or '?'}"
    )
    if report.passed:
        return f"{head}\nOK: manifest, _SUCCESS and every part verified ({report.manifest})"
    counts = Counter(f.code for f in report.failures)
    summary = ", ".join(f"{code} x{n}" for code, n in sorted(counts.items()))
    lines = [head, f"FAILED: {len(report.failures)} failure(s): {summary}"]
    for f in report.failures[:SHOWN]:
        where = f" {f.part}" if f.part else ""
        lines.append(f"  {f.code}{where}: {f.message}")
    if len(report.failures) > SHOWN:
        lines.append(f"  ... and {len(report.failures) - SHOWN} more (--json lists them all)")
    return "\n".join(lines)


__all__ = ["EXIT_CANNOT_CHECK", "EXIT_DATA", "EXIT_OK", "CannotCheck", "run"]
