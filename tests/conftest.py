"""Shared pytest setup: the fault harness's table, printed by the process that reports (the
controller under pytest-xdist, which loads only this conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import pytest

# Imported here, at the top level: hypothesis's pytest plugin imports it lazily in its terminal
# summary, deep inside pytest's hook stack, where rewriting its modules can trip CPython
# 3.11's "AST constructor recursion depth mismatch" (seen on a run that imported no
# hypothesis test) and end a passing session with a traceback.

# No per-example deadline: the suite shares 2 cores with its own servers, and an example that
# waits for the CPU is no failure of the property (speed is for the benchmarks to judge)
hypothesis.settings.register_profile("sluiceway", deadline=None)
hypothesis.settings.load_profile("sluiceway")

# ---- the fault harness's table (tests/integration/test_faults.py) ----------------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, a worker hands the scenarios it ran to the controller."""
    from dataclasses import asdict

    from tests.support import faults

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and faults.RESULTS:
        workeroutput["fault_results"] = {k: asdict(r) for k, r in faults.RESULTS.items()}


def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller's side: merge each worker's scenarios for the summary table."""
    from tests.support import faults

    for nodeid, fields in getattr(node, "workeroutput", {}).get("fault_results", {}).items():
        faults.RESULTS[nodeid] = faults.FaultResult(**fields)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Print the crash-point table of the fault scenarios that ran (also under `make test`)
    and keep it as JSON in .sluiceway/faults.json."""
    from tests.support import faults

    if not faults.RESULTS:
        return
    lines, rows = faults.table(terminalreporter)
    terminalreporter.section("fault scenarios (SIGKILL, restart, outcome)")
    for line in lines:
        terminalreporter.write_line(line)
    out = Path(config.rootpath) / ".sluiceway" / "faults.json"
    try:
        faults.write_json(out, rows)
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {out}: {exc})")
    else:
        terminalreporter.write_line(f"written to {out}")
