"""The DuckDB read model: applies raw run-log messages in batches, rows and offset together.

The file holds the journal of every run (`events`, with the anomalies, quality issues and schema
changes) and the offset, written in one transaction per batch. The per-run tables (`runs`,
`chunks`, `parts`) hold the runs that have ended; a run still in flight is a fold in memory,
rebuilt from its journal in the file on start, and every read merges it in. So a live batch
costs one append and one offset update whatever the size of the runs it touches, and a run's
rows are written once, when it ends (again only if a late event reaches an ended run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from sluiceway.common import codec, crash
from sluiceway.common.domain.access import EVERYTHING, Visibility
from sluiceway.common.domain.lifecycle import TERMINAL_RUN
from sluiceway.common.domain.run import RunState, evolve
from sluiceway.tracker.adapters.tables import (
    PER_RUN_TABLES,
    SCHEMA_FINGERPRINT,
    TABLES,
    chunk_rows,
    kind_of_subject,
    naive_utc,
    part_rows,
    run_of_subject,
    summary_row,
)
from sluiceway.tracker.domain.summary import journal_message, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """One stored message of the run stream, before decoding."""

    seq: int
    subject: str
    data: bytes


class TrackerStore:
    """One DuckDB file: the read model and the projection's offset.

    Not thread-safe: the caller runs every method on one thread (see app.py), so reads never
    interleave with a batch being applied.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One thread: batches are small and frequent, and the tracker shares its machine with
        # the workers; DuckDB's default (a thread per core) costs CPU on every statement.
        self._con = duckdb.connect(str(path), config={"threads": 1})
        self._create_schema()
        # In-memory fold of every non-terminal run (and of terminal runs touched in a batch),
        # with the stream seq of each run's latest event.
        self._states: dict[str, RunState] = {}
        self._last_seq: dict[str, int] = {}
        # The rows of each in-flight run, made on first read after the run changed.
        self._live_rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._live_registered = False  # `_live_runs` is registered and current
        self._offset = 0
        self._load_active()

    # ---- lifecycle ------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Create the tables. A file made by a version with other tables (the schema's
        fingerprint differs) is emptied: the read model is derived, and the projection then
        rebuilds it from stream sequence 1."""
        self._con.execute("CREATE TABLE IF NOT EXISTS projection_schema (fingerprint VARCHAR)")
        stored = self._con.execute("SELECT fingerprint FROM projection_schema").fetchone()
        existing = {
            r[0] for r in self._con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        if stored != (SCHEMA_FINGERPRINT,) and existing & {*TABLES, "projection_offset"}:
            log.warning(
                "the read model in %s has an older schema: rebuilding it from the stream",
                self.path,
            )
            for table in (*TABLES, "projection_offset"):
                self._con.execute(f"DROP TABLE IF EXISTS {table}")
        self._con.execute("DELETE FROM projection_schema")
        self._con.execute("INSERT INTO projection_schema VALUES (?)", [SCHEMA_FINGERPRINT])
        for table, cols in TABLES.items():
            ddl = ", ".join(f"{name} {sql}" for name, sql, _ in cols)
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl})")
        self._con.execute("CREATE TABLE IF NOT EXISTS projection_offset (seq BIGINT NOT NULL)")
        if self._con.execute("SELECT count(*) FROM projection_offset").fetchone() == (0,):
            self._con.execute("INSERT INTO projection_offset VALUES (0)")
        self._con.execute("CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id)")

    def _load_active(self) -> None:
        """Rebuild the fold of every run in flight (a journal and no row in `runs`) from the
        stored journal, not from NATS, and the offset from the file."""
        self._states.clear()
        self._last_seq.clear()
        self._live_rows.clear()
        self._live_registered = False
        rows = self._con.execute(
            "SELECT DISTINCT run_id FROM events WHERE run_id NOT IN (SELECT run_id FROM runs)"
        ).fetchall()
        for (run_id,) in rows:
            self._load_run(run_id)
        row = self._con.execute("SELECT seq FROM projection_offset").fetchone()
        self._offset = int(row[0]) if row else 0

    def _load_run(self, run_id: str) -> RunState:
        state = RunState(run_id=run_id)
        last = 0
        for seq, data in self._con.execute(
            "SELECT seq, data FROM events WHERE run_id = ? ORDER BY seq", [run_id]
        ).fetchall():
            evolve(state, codec.decode(data))
            last = seq
        self._states[run_id] = state
        self._last_seq[run_id] = last
        return state

    def _load_ended(self, run_ids: set[str]) -> set[str]:
        """Fold again, from the journal, those of `run_ids` that are not in flight but ended
        (their rows are in the file), and return them; the others are new runs. One lookup for
        the whole batch, so a new run costs no query."""
        unknown = sorted(run_ids - self._states.keys())
        if not unknown:
            return set()
        found = {
            r
            for (r,) in self._con.execute(
                "SELECT run_id FROM runs WHERE list_contains(?, run_id)", [unknown]
            ).fetchall()
        }
        for run_id in found:
            self._load_run(run_id)
        return found

    def retained_from(self, first_seq: int, ended_before: datetime) -> int | None:
        """The first event at or after `first_seq` of a run that retention keeps: one still in
        flight, or ended at or after `ended_before` (naive or aware UTC). None: every event
        applied from there belongs to a run that ended before it."""
        row = self._con.execute(
            "SELECT min(seq) FROM events WHERE seq >= ? AND run_id NOT IN "
            "(SELECT run_id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?)",
            [first_seq, naive_utc(ended_before)],
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def checkpoint(self) -> None:
        self._con.execute("CHECKPOINT")

    def close(self) -> None:
        self._con.close()

    # ---- the projection -------------------------------------------------------------------

    def offset(self) -> int:
        return self._offset

    def apply(self, batch: Sequence[RawMessage]) -> int:
        """Apply messages in stream order; rows and offset commit together or not at all.
        A message at or below the stored offset is a redelivery and is skipped."""
        con = self._con
        con.begin()
        try:
            last = start = self._offset
            touched: set[str] = set()
            # ended runs with rows in the file that this batch changes (late events)
            stored = self._load_ended({run_of_subject(m.subject) for m in batch if m.seq > start})
            rows: dict[str, list[dict[str, Any]]] = {
                "events": [],
                "anomalies": [],
                "quality_issues": [],
                "schema_changes": [],
            }
            for msg in batch:
                if msg.seq <= last:
                    continue
                last = msg.seq
                self._apply_one(msg, rows, touched)
            ended = {r for r in touched if self._states[r].status in TERMINAL_RUN}
            if last != start:
                for table, table_rows in rows.items():
                    self._insert(table, table_rows)
                self._write_runs(ended, replace=stored & ended)
                # a literal, not a parameter: DuckDB's Python client looks for pandas on every
                # parameterised statement, a third of a live batch's cost
                con.execute(f"UPDATE projection_offset SET seq = {int(last)}")
                crash.point("tracker.before_commit")
            con.commit()
        except BaseException:
            con.rollback()
            self._load_active()  # the in-memory folds may hold half a batch
            raise
        self._offset = last
        for run_id in touched:
            self._live_rows.pop(run_id, None)
            if run_id in ended:
                del self._states[run_id]
                del self._last_seq[run_id]
        if touched:
            self._live_registered = False
        return last

    def _apply_one(
        self,
        msg: RawMessage,
        rows: dict[str, list[dict[str, Any]]],
        touched: set[str],
    ) -> None:
        try:
            event = codec.decode(msg.data, subject=msg.subject)
        except codec.Poison as exc:
            log.warning("undecodable message at seq %d recorded as an anomaly", msg.seq)
            rows["anomalies"].append(
                {
                    "seq": msg.seq,
                    "run_id": run_of_subject(msg.subject),
                    "event_id": "",
                    "kind": kind_of_subject(msg.subject),
                    "reason": f"undecodable: {exc}",
                }
            )
            return
        run_id = event.run_id
        state = self._states.get(run_id)
        if state is None:  # neither in flight nor ended (see _load_ended): a new run
            state = self._states[run_id] = RunState(run_id=run_id)
        n_anomalies = len(state.anomalies)
        n_quality = len(state.quality_issues)
        n_schema = len(state.schema_changes)
        evolve(state, event)
        touched.add(run_id)
        self._last_seq[run_id] = msg.seq
        rows["events"].append(
            {
                "seq": msg.seq,
                "run_id": run_id,
                "kind": event.kind,
                "event_id": event.event_id,
                "occurred_at": naive_utc(event.occurred_at),
                "data": msg.data,
                "message": journal_message(event),
            }
        )
        for a in state.anomalies[n_anomalies:]:
            rows["anomalies"].append(
                {
                    "seq": msg.seq,
                    "run_id": run_id,
                    "event_id": a.event_id,
                    "kind": a.kind,
                    "reason": a.reason,
                }
            )
        for q in state.quality_issues[n_quality:]:
            rows["quality_issues"].append(
                {
                    "seq": msg.seq,
                    "run_id": run_id,
                    "severity": q.severity.value,
                    "rule": q.rule,
                    "message": q.message,
                }
            )
        for s in state.schema_changes[n_schema:]:
            rows["schema_changes"].append(
                {
                    "seq": msg.seq,
                    "run_id": run_id,
                    "added": list(s.added),
                    "removed": list(s.removed),
                    "type_changed": list(s.type_changed),
                }
            )

    def _arrow(self, table: str, rows: list[dict[str, Any]]) -> pa.Table:
        schema = pa.schema([(name, tp) for name, _, tp in TABLES[table]])
        return pa.Table.from_pylist(rows, schema=schema)

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Append rows; the Arrow schema's column order is the table's (the fingerprint
        guarantees it), so the insert is positional."""
        if rows:
            self._con.from_arrow(self._arrow(table, rows)).insert_into(table)

    def _rows_of(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        state = self._states[run_id]
        return {
            "runs": [summary_row(summarize(state, self._last_seq[run_id]))],
            "chunks": chunk_rows(state),
            "parts": part_rows(state),
        }

    def _write_runs(self, run_ids: set[str], *, replace: set[str]) -> None:
        """Write the rows of runs that ended, deleting first those of `replace` (ended runs
        that a late event changed)."""
        for run_id in sorted(replace):
            for table in PER_RUN_TABLES:
                self._con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        made = [self._rows_of(r) for r in sorted(run_ids)]
        for table in PER_RUN_TABLES:
            self._insert(table, [row for m in made for row in m[table]])

    # ---- runs in flight, merged into every read ------------------------------------------

    def _live(self, run_id: str) -> dict[str, list[dict[str, Any]]] | None:
        """The rows of a run in flight, typed as the file's rows (through the Arrow schema)."""
        if run_id not in self._states:
            return None
        rows = self._live_rows.get(run_id)
        if rows is None:
            made = self._rows_of(run_id)
            rows = {t: self._arrow(t, r).to_pylist() for t, r in made.items()}
            self._live_rows[run_id] = rows
        return rows

    def _live_table(self, table: str) -> pa.Table:
        """One per-run table's rows of every run in flight."""
        rows = [row for r in self._states for row in self._live(r)[table]]  # type: ignore[index]
        return self._arrow(table, rows)

    def _runs_relation(self) -> str:
        """SQL naming every run: the ended ones in the file and those in flight."""
        if not self._states:
            return "runs"
        if not self._live_registered:
            self._con.register("_live_runs", self._live_table("runs"))
            self._live_registered = True
        return "(SELECT * FROM runs UNION ALL SELECT * FROM _live_runs)"

    # ---- reads ----------------------------------------------------------------------------

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._con.execute(sql, list(params))
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        live = self._live(run_id)
        if live is not None:
            return dict(live["runs"][0])
        found = self._dicts("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return found[0] if found else None

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT seq, kind, occurred_at, message FROM events WHERE run_id = ? ORDER BY seq",
            [run_id],
        )

    def list_runs(
        self,
        *,
        export_name: str = "",
        statuses: Sequence[str] = (),
        requested_after: datetime | None = None,
        requested_before: datetime | None = None,
        after_key: tuple[datetime, str] | None = None,
        limit: int = 50,
        visible_to: Visibility = EVERYTHING,
    ) -> list[dict[str, Any]]:
        """Newest first by (requested_at, run_id); `after_key` is the last key of the previous
        page (keyset paging, stable under concurrent inserts); only the runs `visible_to` sees
        (the same rule as domain.access.visible)."""
        key = "coalesce(requested_at, TIMESTAMP '1970-01-01')"
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if not visible_to.everything:
            where.append(
                "((owner <> '' AND owner = ?)"
                " OR (team <> '' AND list_contains(?::VARCHAR[], team)))"
            )
            params.extend([visible_to.principal, list(visible_to.teams)])
        if export_name:
            where.append("export_name = ?")
            params.append(export_name)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if requested_after is not None:
            where.append("requested_at > ?")
            params.append(naive_utc(requested_after))
        if requested_before is not None:
            where.append("requested_at < ?")
            params.append(naive_utc(requested_before))
        if after_key is not None:
            where.append(f"({key} < ? OR ({key} = ? AND run_id < ?))")
            at = naive_utc(after_key[0])
            params.extend([at, at, after_key[1]])
        params.append(limit)
        return self._dicts(
            f"SELECT * FROM {self._runs_relation()} WHERE {' AND '.join(where)} "
            f"ORDER BY {key} DESC, run_id DESC LIMIT ?",
            params,
        )

    def list_chunks(self, run_id: str) -> list[dict[str, Any]]:
        live = self._live(run_id)
        if live is not None:  # made in chunk_index order
            return [dict(r) for r in live["chunks"]]
        return self._dicts("SELECT * FROM chunks WHERE run_id = ? ORDER BY chunk_index", [run_id])

    def list_parts(self, run_id: str) -> list[dict[str, Any]]:
        live = self._live(run_id)
        if live is not None:  # made in (chunk_index, attempt, part_index) order
            return [dict(r) for r in live["parts"]]
        return self._dicts(
            "SELECT * FROM parts WHERE run_id = ? ORDER BY chunk_index, attempt, part_index",
            [run_id],
        )

    def run_events(self, run_id: str, after_seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        rows = self._con.execute(
            "SELECT seq, kind, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            [run_id, after_seq, limit],
        ).fetchall()
        return [(int(s), str(k), bytes(d)) for s, k, d in rows]

    def anomalies(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is None:
            return self._dicts("SELECT * FROM anomalies ORDER BY seq")
        return self._dicts("SELECT * FROM anomalies WHERE run_id = ? ORDER BY seq", [run_id])

    def table(self, name: str) -> list[dict[str, Any]]:
        """Every row of one table in a stable order (tests compare rebuilt read models)."""
        if name not in TABLES and name != "projection_offset":
            raise ValueError(f"unknown table {name!r}")
        if name in PER_RUN_TABLES and self._states:
            self._con.register("_live_rows", self._live_table(name))
            try:
                return self._dicts(
                    f"SELECT * FROM (SELECT * FROM {name} UNION ALL SELECT * FROM _live_rows) "
                    "ORDER BY ALL"
                )
            finally:
                self._con.unregister("_live_rows")
        return self._dicts(f"SELECT * FROM {name} ORDER BY ALL")
