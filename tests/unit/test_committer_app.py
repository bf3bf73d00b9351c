"""The committer's flow against an in-memory log and real files: commit, restart, gates."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluiceway.committer.app import Committer
from sluiceway.common import fingerprint, layout
from sluiceway.common.bus import Appended
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.domain.run import fold

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN = "20260301T120000Z-aabbccdd"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


class FakeLog:
    def __init__(self) -> None:
        self.events: list[ev.RunEvent] = []
        self.fail_on: str = ""  # kind whose append raises once (a crash before it)
        # (run, last kind on the log) each time a commit was copied into the export state
        self.recorded: list[tuple[str, str]] = []

    async def append(self, event: ev.RunEvent) -> Appended:
        if event.kind == self.fail_on:
            self.fail_on = ""
            raise ConnectionError("nats went away")
        for seq, e in enumerate(self.events, 1):
            if e.event_id == event.event_id:
                return Appended(seq=seq, duplicate=True)
            if type(event.body) in ev.ONCE_PER_RUN and (e.run_id, e.kind) == (
                event.run_id,
                event.kind,
            ):
                return Appended(seq=seq, conflict=True)
        self.events.append(event)
        return Appended(seq=len(self.events))

    async def history(self, run_id: str) -> list[tuple[int, ev.RunEvent]]:
        return [(i, e) for i, e in enumerate(self.events, 1) if e.run_id == run_id]

    async def last_commit(self, export_name: str) -> ev.RunEvent | None:
        commits = [
            e
            for e in self.events
            if isinstance(e.body, ev.ManifestCommitted) and e.export_name == export_name
        ]
        return commits[-1] if commits else None

    async def record_commit(self, run_id: str, export_name: str) -> None:
        self.recorded.append((run_id, self.kinds()[-1]))  # and the last fact before it

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def _history(
    dest: Path, rows: tuple[int, ...] = (3, 2), run_id: str = RUN, *, skip_empty: bool = False
) -> list[ev.RunEvent]:
    spec = ev.ExportSpec(
        name="orders",
        source=ev.SourceSpec("sqlite", path="/x.db"),
        table="orders",
        mode="chunked",
        chunk_column="id",
        chunk_count=len(rows),
        format="csv",
        compression="none",
        destination=str(dest),
        skip_empty=skip_empty,
    )
    plan = ev.PlanResolved(
        plan_id="plan-1",
        strategy="chunked",
        format="csv",
        compression="none",
        chunks=tuple(
            ev.ChunkRange(i, str(i), str(i + 1), i == len(rows) - 1) for i in range(len(rows))
        ),
        schema=(ev.SchemaField("id", "int64", False),),
        key_low="0",
        key_high=str(len(rows)),
    )
    run_dir = layout.run_dir(str(dest), "orders", run_id)
    run_dir.mkdir(parents=True)
    bodies: list[ev.Body] = [ev.RunRequested(spec=spec), plan]
    for i, n in enumerate(rows):
        name = layout.part_name(i, 0, 1, "csv")
        (run_dir / name).write_text("id\n" + "".join(f"{k}\n" for k in range(n)))
        fp, size = fingerprint.of_file(run_dir / name)
        bodies += [
            ev.ChunkStarted(chunk_index=i, attempt=1),
            ev.FileWritten(name, n, size, 0, i, 1, fp),
            ev.ChunkCompleted(chunk_index=i, rows=n, files=1, attempt=1),
        ]
    return [
        ev.RunEvent(event_id(run_id, b), run_id, "orders", T0 + timedelta(seconds=i), b)
        for i, b in enumerate(bodies)
    ]


def _committer(log: FakeLog) -> Committer:
    return Committer(
        log,
        producer=ev.Producer("committer", "t"),
        source_factory=None,
        clock=lambda: T0 + timedelta(minutes=1),
    )


async def _feed(committer: Committer, log: FakeLog) -> None:
    """Deliver every event of the log once, in order (as the durable consumer would)."""
    i = 0
    while i < len(log.events):
        await committer.handle(log.events[i])
        i += 1


async def test_commit_writes_manifest_success_and_completes_once(dest: Path) -> None:
    log = FakeLog()
    log.events = _history(dest)
    await _feed(_committer(log), log)
    assert log.kinds()[-4:] == [
        "validation_result",
        "reconciliation_result",
        "manifest_committed",
        "completed",
    ]
    mpath = layout.manifest_path(str(dest), "orders", RUN)
    data = mpath.read_bytes()
    assert layout.success_path(str(dest), "orders", RUN).read_text() == fingerprint.of_bytes(data)
    committed = log.events[-2].body
    assert isinstance(committed, ev.ManifestCommitted)
    assert committed.fingerprint == fingerprint.of_bytes(data)
    assert (committed.row_count, committed.part_count) == (5, 2)
    assert committed.manifest_uri == mpath.resolve().as_uri()
    # the export state moves after ManifestCommitted is stored, before the run ends
    assert log.recorded == [(RUN, "manifest_committed")]
    assert layout.latest_pointer_path(str(dest), "orders").read_bytes() == data
    completed = log.events[-1].body
    assert isinstance(completed, ev.RunCompleted)
    assert completed.status is ev.RunStatus.SUCCEEDED and completed.duration_ms == 60_000


async def test_a_restart_after_a_crash_gives_the_same_manifest_and_one_commit(
    dest: Path,
) -> None:
    log = FakeLog()
    log.events = _history(dest)
    reference = FakeLog()
    reference.events = _history(dest / "ref")
    await _feed(_committer(reference), reference)
    want = layout.manifest_path(str(dest / "ref"), "orders", RUN).read_text()
    want = want.replace(str(dest / "ref"), str(dest))

    # crash between ManifestCommitted and RunCompleted
    log.fail_on = "completed"
    try:
        await _committer(log).handle(log.events[-1])
    except ConnectionError:
        pass
    assert log.kinds()[-1] == "manifest_committed"
    await _feed(_committer(log), log)  # a fresh process replays the log
    assert log.kinds().count("manifest_committed") == 1
    assert log.kinds()[-1] == "completed"
    assert layout.manifest_path(str(dest), "orders", RUN).read_text() == want
    # recorded again on the way to RunCompleted after the restart (idempotent in the bus)
    assert log.recorded == [(RUN, "manifest_committed")] * 2


async def test_a_tampered_part_fails_validation_and_writes_no_manifest(dest: Path) -> None:
    log = FakeLog()
    log.events = _history(dest)
    part = layout.run_dir(str(dest), "orders", RUN) / layout.part_name(1, 0, 1, "csv")
    part.write_text("id\n7\n9\n")  # same size, other bytes
    await _feed(_committer(log), log)
    validation = next(e.body for e in log.events if e.kind == "validation_result")
    assert isinstance(validation, ev.ValidationResult)
    assert [f.code for f in validation.failures] == ["FINGERPRINT_MISMATCH"]
    done = log.events[-1].body
    assert isinstance(done, ev.RunCompleted) and done.status is ev.RunStatus.FAILED
    assert "FINGERPRINT_MISMATCH" in done.error_message
    assert not layout.manifest_path(str(dest), "orders", RUN).exists()
    assert "manifest_committed" not in log.kinds()


async def test_a_source_count_mismatch_fails_reconciliation(dest: Path) -> None:
    class Counting:
        def count(self, spec: ev.ExportSpec, rng: ev.ChunkRange | None) -> int:
            return 6

        def close(self) -> None:
            pass

    log = FakeLog()
    log.events = _history(dest)
    committer = Committer(
        log,
        producer=ev.Producer("committer", "t"),
        source_factory=lambda s: Counting(),  # type: ignore[arg-type,return-value]
    )
    await _feed(committer, log)
    rec = next(e.body for e in log.events if e.kind == "reconciliation_result")
    assert rec == ev.ReconciliationResult(source_count=6, exported_rows=5, matched=False)
    assert isinstance(log.events[-1].body, ev.RunCompleted)
    assert log.events[-1].body.status is ev.RunStatus.FAILED
    assert not layout.manifest_path(str(dest), "orders", RUN).exists()


async def test_an_empty_run_commits_a_manifest_with_no_parts(dest: Path) -> None:
    log = FakeLog()
    log.events = _history(dest, rows=(0,))
    await _feed(_committer(log), log)
    doc = json.loads(layout.manifest_path(str(dest), "orders", RUN).read_text())
    assert doc["row_count"] == 0 and doc["part_count"] == 1  # a header-only CSV part
    assert log.kinds()[-1] == "completed"


async def test_with_skip_empty_a_run_of_zero_rows_is_skipped_and_commits_nothing(
    dest: Path,
) -> None:
    previous = FakeLog()
    previous.events = _history(dest, rows=(3,), run_id="r-before")
    await _feed(_committer(previous), previous)
    pointer = layout.latest_pointer_path(str(dest), "orders").read_bytes()

    log = FakeLog()
    log.events = _history(dest, rows=(0,), skip_empty=True)
    await _feed(_committer(log), log)
    # the part of zero rows (a worker writes none; this history has one) goes aside, said so
    assert log.kinds()[-3:] == ["reconciliation_result", "warning", "completed"]
    done = log.events[-1].body
    assert isinstance(done, ev.RunCompleted) and done.status is ev.RunStatus.SKIPPED
    assert "skip_empty" in done.skip_reason and done.duration_ms == 60_000
    assert "manifest_committed" not in log.kinds() and log.recorded == []
    assert not layout.manifest_path(str(dest), "orders", RUN).exists()
    assert not layout.success_path(str(dest), "orders", RUN).exists()
    assert not list(layout.run_dir(str(dest), "orders", RUN).iterdir())
    assert layout.latest_pointer_path(str(dest), "orders").read_bytes() == pointer
    assert fold(log.events, RUN).status is ev.RunStatus.SKIPPED  # the table allows it


async def test_skip_empty_skips_nothing_when_the_source_has_rows(dest: Path) -> None:
    """Zero rows read while the source counts 7: no skip, reconciliation fails the run."""

    class Seven:
        def count(self, spec: ev.ExportSpec, rng: ev.ChunkRange | None) -> int:
            return 7

        def close(self) -> None:
            pass

    log = FakeLog()
    log.events = _history(dest, rows=(0,), skip_empty=True)
    committer = Committer(
        log,
        producer=ev.Producer("committer", "t"),
        source_factory=lambda s: Seven(),  # type: ignore[arg-type,return-value]
    )
    await _feed(committer, log)
    failed = log.events[-1].body
    assert isinstance(failed, ev.RunCompleted) and failed.status is ev.RunStatus.FAILED
    assert "reconciliation" in failed.error_message


async def test_files_no_manifest_lists_are_set_aside_with_a_warning(dest: Path) -> None:
    # a losing attempt's part, a part renamed by an attempt that died before FileWritten, and
    # a torn temporary file: none is listed; all are moved to _quarantine/<run_id>/, not deleted
    log = FakeLog()
    log.events = _history(dest)
    run_dir = layout.run_dir(str(dest), "orders", RUN)
    strays = [
        layout.part_name(0, 0, 2, "csv"),
        layout.part_name(1, 0, 3, "csv"),
        layout.temp_name(layout.part_name(1, 0, 4, "csv")),
    ]
    for name in strays:
        (run_dir / name).write_text("id\n1\n")
    await _feed(_committer(log), log)

    manifest = json.loads((run_dir / "manifest.json").read_bytes())
    assert [p["attempt"] for p in manifest["parts"]] == [1, 1]
    quarantine = layout.quarantine_dir(str(dest), "orders", RUN)
    assert sorted(p.name for p in quarantine.iterdir()) == sorted(strays)
    assert not any((run_dir / name).exists() for name in strays)
    warnings = [e.body for e in log.events if isinstance(e.body, ev.Warning)]
    assert len(warnings) == 1 and warnings[0].context == "quarantine"
    assert f"moved 3 file(s) no manifest lists to _quarantine/{RUN}/" in warnings[0].message
    assert log.kinds()[-2:] == ["warning", "completed"]


async def test_a_late_finish_of_an_older_run_never_moves_the_latest_pointer_back(
    dest: Path,
) -> None:
    # run A committed first, crashed before RunCompleted; run B (same second, so its id may sort
    # lower) committed after it. When A finishes, the pointer must stay on B: stream order wins.
    log = FakeLog()
    log.events = _history(dest)
    log.fail_on = "completed"
    with pytest.raises(ConnectionError):
        await _feed(_committer(log), log)
    later = "20260301T120000Z-00000000"  # sorts below RUN
    b_events = _history(dest, run_id=later)
    log.events.extend(b_events)
    b = _committer(log)
    for event in b_events:
        await b.handle(event)  # B commits and points at itself
    assert log.kinds()[-1] == "completed" and log.events[-1].run_id == later
    await _committer(log).handle(log.events[0])  # A's redelivery: it finishes now
    assert log.events[-1].run_id == RUN and log.kinds()[-1] == "completed"
    pointer = json.loads(layout.latest_pointer_path(str(dest), "orders").read_bytes())
    assert pointer["run_id"] == later
