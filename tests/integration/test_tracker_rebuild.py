"""`python -m sluiceway.tracker rebuild` and `sluiceway rebuild-tracker` against a real stream."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from sluiceway.cli import stack as stackmod
from sluiceway.common import codec
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.tracker.adapters.projection import RawMessage, TrackerStore
from sluiceway.tracker.adapters.tables import TABLES
from sluiceway.tracker.rebuild import temp_path
from sluiceway.v1 import events_pb2
from tests.unit.histories import History

pytestmark = pytest.mark.integration

ALL_TABLES = (*TABLES, "projection_offset")
TIMEOUT_S = 60


def histories() -> list[list[ev.RunEvent]]:
    """Four runs: succeeded with a retry, fenced double attempt, failed for good, canceled."""
    ok = History("rb-ok").planned(3).chunk_done(0).chunk_retried(1).chunk_done(2).committed()
    fenced = History("rb-fenced").planned(1).chunk_fenced(0)
    failed = History("rb-failed").planned(2).chunk_done(0).chunk_failed(1).failed()
    canceled = History("rb-canceled").planned(2).chunk_done(0).canceled()
    return [ok.events, fenced.events, failed.events, canceled.events]


async def append_stream(bus: Bus) -> list[RawMessage]:
    """Publish the runs interleaved (as live services would), plus one undecodable message;
    return what the stream now holds, as the tracker receives it. Published as raw messages,
    not through Bus.append, so that the stream holds exactly these facts whatever the append
    guards (the late ChunkCompleted of a fenced attempt is refused by newer writers)."""
    runs = histories()
    messages: list[tuple[str, bytes]] = []
    for i in range(max(len(h) for h in runs)):
        for h in runs:
            if i < len(h):
                e = h[i]
                messages.append((bus.names.run_subject(e.run_id, e.kind), codec.encode(e)))
        if i == 3:
            poison = b"\xff\xfe not a protobuf"
            messages.append((bus.names.run_subject("rb-ok", "chunk_started"), poison))
    stored: list[RawMessage] = []
    for subject, data in messages:
        ack = await bus.js.publish(subject, data)
        stored.append(RawMessage(ack.seq, subject, data))
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    return stored


def tables(path: Path) -> dict[str, list[dict[str, object]]]:
    store = TrackerStore(path)
    try:
        return {name: store.table(name) for name in ALL_TABLES}
    finally:
        store.close()


def reference(tmp_path: Path, stored: list[RawMessage], name: str = "ref.duckdb") -> Path:
    """A TrackerStore fed the same messages directly, in a few batches."""
    path = tmp_path / name
    store = TrackerStore(path)
    for i in range(0, len(stored), 7):
        store.apply(stored[i : i + 7])
    store.checkpoint()
    store.close()
    return path


def env_for(nats_server: LocalNats, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return {
        **env,
        "SLUICEWAY_NATS_URL": nats_server.url,
        "SLUICEWAY_NAMESPACE": namespace,
        **extra,
    }


async def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


PROGRESS = re.compile(
    r"^rebuild (?P<path>\S+): (?P<applied>\d+)/(?P<total>\d+) events applied "
    r"\(seq (?P<seq>\d+)/(?P<last>\d+), (?P<pct>[\d.]+)%\), \d+ events/s$"
)
FINAL = re.compile(
    r"^rebuilt (?P<path>\S+): (?P<applied>\d+) events through seq (?P<seq>\d+) in [\d.]+ s "
    r"\(\d+ events/s\), (?P<runs>\d+) runs, (?P<anomalies>\d+) anomalies$"
)


async def test_rebuild_replaces_the_file_with_the_read_model_of_the_whole_stream(
    nats_server: LocalNats, namespace: str, bus: Bus, tmp_path: Path
) -> None:
    stored = await append_stream(bus)
    db = tmp_path / "db" / "tracker.duckdb"
    stale = TrackerStore(db)  # an old read model that saw only the first few messages
    stale.apply(stored[:5])
    stale.close()

    proc = await run(
        ["-m", "sluiceway.tracker", "rebuild", "--db", str(db)], env_for(nats_server, namespace)
    )

    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    progress = [m for m in map(PROGRESS.match, lines) if m]
    assert progress, proc.stderr
    assert all(int(m["total"]) == int(m["last"]) == len(stored) for m in progress)
    final = FINAL.match(lines[-1])
    assert final, lines[-1]
    assert (final["path"], int(final["applied"]), int(final["seq"])) == (
        str(db),
        len(stored),
        len(stored),
    )
    assert int(final["runs"]) == 4
    assert int(final["anomalies"]) == 3  # the poison message and the two fenced-off facts

    rebuilt = tables(db)
    assert rebuilt == tables(reference(tmp_path, stored))
    statuses = {r["run_id"]: r["status"] for r in rebuilt["runs"]}
    assert statuses == {
        "rb-ok": "SUCCEEDED",
        "rb-fenced": "RUNNING",
        "rb-failed": "FAILED",
        "rb-canceled": "CANCELED",
    }
    assert rebuilt["projection_offset"] == [{"seq": len(stored)}]
    assert sorted(p.name for p in db.parent.iterdir()) == ["tracker.duckdb"]  # no tmp, no wal


async def test_a_database_held_open_elsewhere_is_refused_by_name(
    nats_server: LocalNats, namespace: str, bus: Bus, tmp_path: Path
) -> None:
    stored = await append_stream(bus)
    db = tmp_path / "tracker.duckdb"
    holder = TrackerStore(db)  # this process holds DuckDB's lock, like a running tracker
    try:
        holder.apply(stored[:3])
        before = {name: holder.table(name) for name in ALL_TABLES}
        proc = await run(
            ["-m", "sluiceway.tracker", "rebuild", "--db", str(db)],
            env_for(nats_server, namespace),
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"sluiceway-tracker rebuild: {db} is open in another process")
        assert f"(PID {os.getpid()})" in lines[0]

        cli = await run(
            ["-m", "sluiceway.cli.main", "rebuild-tracker", "--db", str(db)],
            env_for(nats_server, namespace),
        )
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines() == [
            lines[0].replace("sluiceway-tracker rebuild:", "error:")
        ]
        assert {name: holder.table(name) for name in ALL_TABLES} == before
    finally:
        holder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracker.duckdb"]


async def test_the_cli_rebuilds_with_the_nats_url_of_the_recorded_stack(
    nats_server: LocalNats, namespace: str, bus: Bus, tmp_path: Path
) -> None:
    stored = await append_stream(bus)
    state_dir = tmp_path / "state"
    stackmod.write_state(stackmod.StackState(state_dir=str(state_dir), nats_url=nats_server.url))
    env = env_for(nats_server, namespace)
    del env["SLUICEWAY_NATS_URL"]

    proc = await run(
        ["-m", "sluiceway.cli.main", "rebuild-tracker", "--state-dir", str(state_dir)], env
    )

    assert proc.returncode == 0, proc.stderr
    db = state_dir / "tracker.duckdb"
    assert FINAL.match(proc.stderr.strip().splitlines()[-1])
    assert tables(db) == tables(reference(tmp_path, stored))


KILL_MIDWAY = """
import asyncio, os, signal, sys
from sluiceway.common import bus as busmod
from sluiceway.tracker.rebuild import rebuild

def die(p):
    if p.seq == 0:
        return
    print(f"killed at seq {p.seq}/{p.last_seq}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    nc = await busmod.connect(sys.argv[1], name="rebuild-killed", connect_timeout_s=10)
    await rebuild(busmod.Bus(nc, busmod.Names(sys.argv[2])), sys.argv[3], report=die, batch_size=4)

asyncio.run(main())
"""


async def test_a_rebuild_killed_midway_leaves_the_old_file_and_the_next_one_succeeds(
    nats_server: LocalNats, namespace: str, bus: Bus, tmp_path: Path
) -> None:
    stored = await append_stream(bus)
    db = tmp_path / "tracker.duckdb"
    old = TrackerStore(db)
    old.apply(stored[:5])
    old.close()
    before = tables(db)

    killed = await run(
        ["-c", KILL_MIDWAY, nats_server.url, namespace, str(db)], env_for(nats_server, namespace)
    )

    assert killed.returncode == -9, killed.stderr
    seq, last = map(int, re.findall(r"killed at seq (\d+)/(\d+)", killed.stderr)[0])
    assert 0 < seq < last == len(stored)  # mid-rebuild: the new file was half written
    assert temp_path(db).exists()
    assert tables(db) == before

    proc = await run(
        ["-m", "sluiceway.tracker", "rebuild", "--db", str(db)], env_for(nats_server, namespace)
    )
    assert proc.returncode == 0, proc.stderr
    assert not temp_path(db).exists()
    assert tables(db) == tables(reference(tmp_path, stored))


async def test_record_history_writes_a_run_as_json_lines_that_read_back_to_its_events(
    nats_server: LocalNats, namespace: str, bus: Bus, tmp_path: Path
) -> None:
    """tools/record_history.py, which grows tests/data/histories from a live stream."""
    await append_stream(bus)
    out = tmp_path / "rb-ok.jsonl"
    tool = Path(__file__).resolve().parents[2] / "tools" / "record_history.py"

    proc = await run(
        [str(tool), "rb-ok", "-o", str(out), "--namespace", namespace, "--expected"],
        env_for(nats_server, namespace),
    )

    assert proc.returncode == 0, proc.stderr
    assert "is not a RunEvent, left out" in proc.stderr  # the poison message of run rb-ok
    lines = out.read_text().splitlines()
    recorded = [
        codec.event_from_pb(json_format.Parse(line, events_pb2.RunEvent())) for line in lines
    ]
    assert recorded == histories()[0]
    sidecar = json.loads(out.with_suffix(".expected.json").read_text())
    assert (sidecar["run_id"], sidecar["status"], sidecar["retries"]) == ("rb-ok", "SUCCEEDED", 1)
    assert sidecar["committed_files"] == [
        "part-00000-0000-a1.parquet",
        "part-00001-0000-a2.parquet",
        "part-00002-0000-a1.parquet",
    ]
