"""The CLI against a real stack: up --detach, run --wait --json, status, events, runs, down."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
  - name: small
    source: {engine: sqlite, path: small.db}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 400
    destination: out
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "sluiceway.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    con = sqlite3.connect(tmp_path / "small.db")
    con.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(12,2), "
        "seen TIMESTAMP)"
    )
    con.executemany(
        "INSERT INTO items VALUES (?,?,?,?)",
        [
            (i, f"item {i} Zoë 東京", f"{i}.5", None if i % 7 == 0 else "2024-05-01 12:00:00")
            for i in range(1, 2001)
        ],
    )
    con.commit()
    con.close()
    cfg = tmp_path / "small.yaml"
    cfg.write_text(CONFIG)
    return cfg


def test_up_run_inspect_down(tmp_path: Path, source: Path) -> None:
    state_dir = tmp_path / "state"
    sd = ["--state-dir", str(state_dir)]
    up = cli("up", "--detach", "--workers", "2", *sd)
    assert up.returncode == 0, up.stderr
    state = json.loads((state_dir / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"]]
    assert len(pids) == 6 and state["control_addr"] and state["tracker_addr"]
    try:
        run = cli("run", "-c", str(source), "--wait", "--json", *sd, timeout=180)
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["status"] == "RUN_STATUS_SUCCEEDED"
        assert int(summary["total_rows"]) == 2000
        run_id = summary["run_id"]

        status = cli("status", run_id, *sd)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout

        events = cli("events", run_id, *sd)
        assert events.returncode == 0
        kinds = [line.split()[2] for line in events.stdout.splitlines()]
        assert kinds[0] == "requested" and kinds[-1] in ("completed", "run_completed")

        runs = cli("runs", "--export", "small", *sd)
        assert runs.returncode == 0 and run_id in runs.stdout

        missing = cli("status", "no-such-run", *sd)
        assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND")

        # a run that has ended cannot be canceled: nothing is appended
        late = cli("cancel", run_id, "--reason", "too late", *sd, timeout=60)
        assert late.returncode == 1 and "FAILED_PRECONDITION" in late.stderr, late.stderr
        assert "already ended SUCCEEDED" in late.stderr
        assert "cancel_requested" not in cli("events", run_id, *sd).stdout
        unknown = cli("cancel", "no-such-run", *sd)
        assert unknown.returncode == 1 and unknown.stderr.startswith("error: NOT_FOUND")
    finally:
        down = cli("down", *sd, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not (state_dir / "state.json").exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.1)
    left = [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert left == []


def test_run_with_bad_config_fails_before_any_rpc(tmp_path: Path, source: Path) -> None:
    source.write_text(CONFIG.replace("chunk_size: 400", "chunk_size: 400\n    chunk_count: 3"))
    res = cli("run", "-c", str(source), "--state-dir", str(tmp_path / "none"))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "export 'small'" in res.stderr
