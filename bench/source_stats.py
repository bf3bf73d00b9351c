"""What the source did while an export ran: its server processes' CPU seconds, peak client
backends, and the statements pg_stat_statements recorded (bench/run.py, bench/profiles.py)."""

from __future__ import annotations

import threading

import psutil
import psycopg

from tests.support.localpg import LocalPostgres

STATEMENTS_SQL = """
SELECT coalesce(sum(s.calls), 0)::bigint, coalesce(sum(s.total_exec_time), 0)::float8
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() AND s.query NOT ILIKE '%pg_stat%'
"""
BACKENDS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


class SourceSampler:
    """While an export runs: the peak number of other client backends on the database and the
    CPU seconds of every server process (the postmaster's children), sampled every 0.2 s."""

    def __init__(self, pg: LocalPostgres, every_s: float = 0.2) -> None:
        self._url = pg.url
        pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        self._postmaster = psutil.Process(pid)
        self._cpu: dict[int, float] = {}  # pid -> its CPU seconds when first / last seen
        self._start: dict[int, float] = {}
        self.peak_backends = 0
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample_cpu(self) -> None:
        for proc in self._postmaster.children():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            used = t.user + t.system
            self._start.setdefault(proc.pid, used)
            self._cpu[proc.pid] = used

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as con:
            while not self._stop.is_set():
                row = con.execute(BACKENDS_SQL).fetchone()
                self.peak_backends = max(self.peak_backends, int(row[0]) if row else 0)
                self._sample_cpu()
                self._stop.wait(self._every_s)

    @property
    def cpu_s(self) -> float:
        """CPU seconds the server processes used while sampled (a backend that lived less
        than one sample interval is missed: the figure is a floor)."""
        return sum(self._cpu[pid] - self._start[pid] for pid in self._cpu)

    def __enter__(self) -> SourceSampler:
        self._sample_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample_cpu()


def statements(url: str, *, reset: bool = False) -> tuple[int, float]:
    """(calls, total execution ms) recorded by pg_stat_statements for the database."""
    with psycopg.connect(url, autocommit=True) as con:
        if reset:
            con.execute("SELECT pg_stat_statements_reset()")
            return 0, 0.0
        row = con.execute(STATEMENTS_SQL).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


KINDS_SQL = """
SELECT CASE WHEN s.query ILIKE 'SELECT COUNT(*)%%' OR s.query ILIKE 'COPY (SELECT COUNT(*)%%'
            THEN 'count'
            WHEN s.query ILIKE 'COPY (SELECT%%' THEN 'read'
            ELSE 'other' END AS kind,
       sum(s.calls)::bigint, sum(s.total_exec_time)::float8, sum(s.rows)::bigint
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() AND s.query NOT ILIKE '%%pg_stat%%'
GROUP BY 1 ORDER BY 1
"""


def statement_kinds(url: str) -> dict[str, dict[str, float]]:
    """pg_stat_statements since the last reset, by kind: `read` (the COPY of a range), `count`
    (a range's COUNT(*) for reconciliation), `other` (sessions, introspection, snapshots):
    calls, execution seconds (the statement's wall time on the server, a COPY's included its
    wait for the client) and rows."""
    with psycopg.connect(url, autocommit=True) as con:
        rows = con.execute(KINDS_SQL).fetchall()
    return {
        str(kind): {"calls": int(calls), "exec_s": round(ms / 1000, 3), "rows": int(n)}
        for kind, calls, ms, n in rows
    }
