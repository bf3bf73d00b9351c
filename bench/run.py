"""`make bench`: PostgreSQL -> Parquet through the whole stack, against a binary COPY reference.

Prints one JSON report on stdout; progress goes to stderr. BENCH_ROWS overrides the row count,
BENCH_EXPORT_RUNS the number of exports (default 2). The table is frozen and checkpointed after
loading; then reference COPY and export alternate (COPY, export, COPY, export, COPY) and the
ratio is best COPY time / best export time, with every reading in the report.
The PostgreSQL URL reaches the services only through the BENCH_PG_URL environment variable.
Then the cost of security, in the same run: `api_auth` (bench/auth.py, API calls) and
`export_auth` (bench/secured.py, the same export with authentication and TLS off and on).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
from rich.console import Console

from bench import auth as auth_bench
from bench import secured
from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import connect, stack_endpoints
from sluiceway.cli.main import follow, load_config
from sluiceway.client import Client
from sluiceway.v1 import events_pb2
from tests.support.localpg import LocalPostgres

URL_ENV = "BENCH_PG_URL"
TARGETS = {"ratio_min": 0.6, "worker_rss_max_mb": 300}
CHUNKS = 20
EXPORT_RUNS = int(os.environ.get("BENCH_EXPORT_RUNS", "2"))

CONFIG = """
version: 1
exports:
  - name: {name}
    source: {{engine: postgres, url_env: {url_env}}}
    table: public.bench
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    format: parquet
    compression: zstd
    destination: out
{extra}"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def create_table(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS bench")
        con.execute("""
            CREATE TABLE bench (
                id bigint PRIMARY KEY,
                qty int NOT NULL,
                label text,
                amount numeric(12,2),
                attrs jsonb,
                created_at timestamptz NOT NULL
            )""")
        con.execute(
            """
            INSERT INTO bench
            SELECT g,
                   (g * 7919) %% 1000,
                   CASE WHEN g %% 17 = 0 THEN NULL ELSE 'label-' || md5(g::text) END,
                   ((g * 104729) %% 10000000) / 100.0,
                   jsonb_build_object('k', g %% 100, 'tag', 't' || (g %% 13), 'ok', g %% 2 = 0),
                   timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
            FROM generate_series(1::bigint, %s::bigint) AS g""",
            (rows,),
        )
        # The throwaway cluster commits asynchronously: a VACUUM straight after the load cannot
        # mark pages all-visible until the commit record is flushed (hint bits wait for it),
        # and the snapshot COUNT(*) would then fetch every heap tuple. Flush first, as a table
        # of a running database would be.
        con.execute("CHECKPOINT")
        con.execute("VACUUM (FREEZE, ANALYZE) bench")
        con.execute("CHECKPOINT")
        visible = con.execute(
            "SELECT relallvisible::float / greatest(relpages, 1) FROM pg_class"
            " WHERE relname = 'bench'"
        ).fetchone()
        log(f"pages all-visible after VACUUM: {100 * (visible[0] if visible else 0):.0f}%")


def reference_copy(url: str) -> tuple[float, int]:
    """Seconds to read `COPY (SELECT * FROM bench) TO STDOUT (FORMAT binary)` fully."""
    with psycopg.connect(url) as con, con.cursor() as cur:
        t0 = time.perf_counter()
        n = 0
        with cur.copy("COPY (SELECT * FROM bench) TO STDOUT (FORMAT binary)") as copy:
            for block in copy:
                n += len(block)
        return time.perf_counter() - t0, n


def bench_spec(work: Path, rows: int, chunks: int, name: str = "bench", extra: str = "") -> Any:
    """The export of the bench table in `chunks` key ranges, resolved as the CLI does; `extra`
    adds indented config lines to the export."""
    cfg = work / f"{name}.yaml"
    chunk_size = max(1, -(-rows // chunks))
    cfg.write_text(CONFIG.format(name=name, url_env=URL_ENV, chunk_size=chunk_size, extra=extra))
    return load_config(str(cfg), name)


def timed_export(client: Client, spec: Any) -> tuple[float, Any, str]:
    """Submit `spec`, follow the run to its end; (wall seconds, RunSummary, run_id)."""
    with open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        resp = client.submit(spec, requested_by="bench")
        summary = follow(
            client, resp.run_id, min_seq=resp.stream_seq, console=Console(file=sink), quiet=True
        )
        return time.perf_counter() - t0, summary, resp.run_id


class RssSampler:
    """Peak RSS (MB) per service, sampled every 0.2 s; workers are folded into one max."""

    def __init__(self, state: stackmod.StackState, every_s: float = 0.2) -> None:
        self.procs: list[tuple[str, psutil.Process]] = []
        for p in state.processes:
            if p.service == "nats-server":
                continue
            try:
                self.procs.append((p.service, psutil.Process(p.pid)))
            except psutil.NoSuchProcess:
                pass
        self.peak: dict[str, float] = {}
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for service, proc in self.procs:
                try:
                    mb = proc.memory_info().rss / 1e6
                except psutil.Error:
                    continue
                self.peak[service] = max(self.peak.get(service, 0.0), mb)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def main() -> int:
    rows = int(os.environ.get("BENCH_ROWS", "5000000"))
    work = Path(tempfile.mkdtemp(prefix="sluiceway-bench-"))
    pg = LocalPostgres()
    stack: stackmod.Stack | None = None
    try:
        log(f"starting PostgreSQL; {rows:,} rows")
        pg.start()
        # the URL holds a password: it only ever travels as an environment variable
        os.environ[URL_ENV] = pg.url
        t0 = time.perf_counter()
        create_table(pg.url, rows)
        log(f"table created in {time.perf_counter() - t0:.1f}s")
        spec = bench_spec(work, rows, CHUNKS)

        log("starting the stack (2 workers)")
        stack = stackmod.start_stack(work / "state", workers=2, env=dict(os.environ))
        ep = stack_endpoints(stack)

        # The reference and the export alternate, and each reports its best time: one reading
        # of either is noisy on a shared 2-core machine (checkpoints, autovacuum, hint bits).
        copies: list[tuple[float, int]] = []
        walls: list[float] = []
        with connect(ep) as client, RssSampler(stack.state) as rss:
            for _ in range(EXPORT_RUNS):
                copies.append(reference_copy(pg.url))
                log(f"reference binary COPY: {copies[-1][0]:.2f}s")
                wall, summary, run_id = timed_export(client, spec)
                walls.append(wall)
                name = events_pb2.RunStatus.Name(summary.status)
                log(f"run {run_id}: {name} in {walls[-1]:.2f}s")
                if summary.status != events_pb2.RUN_STATUS_SUCCEEDED:
                    break
            copies.append(reference_copy(pg.url))
            log(f"reference binary COPY: {copies[-1][0]:.2f}s")
        copy_s, copy_bytes = min(copies)
        wall_s = min(walls)
        ok = summary.status == events_pb2.RUN_STATUS_SUCCEEDED
        log(f"run {run_id}: {events_pb2.RunStatus.Name(summary.status)} in {wall_s:.2f}s")
        peak = {k: round(v, 1) for k, v in sorted(rss.peak.items())}
        ratio = copy_s / wall_s if wall_s > 0 else 0.0
        report = {
            "rows": summary.total_rows,
            "status": events_pb2.RunStatus.Name(summary.status).removeprefix("RUN_STATUS_"),
            "wall_s": round(wall_s, 3),
            "rows_per_s": round(summary.total_rows / wall_s) if wall_s else 0,
            "mb_per_s": round(summary.bytes_written / 1e6 / wall_s, 2) if wall_s else 0,
            "bytes_written": summary.bytes_written,
            "reference_copy_s": round(copy_s, 3),
            "reference_copy_runs_s": [round(c, 3) for c, _ in copies],
            "wall_runs_s": [round(w, 3) for w in walls],
            "reference_rows_per_s": round(rows / copy_s) if copy_s else 0,
            "reference_copy_mb": round(copy_bytes / 1e6, 1),
            "ratio_vs_copy": round(ratio, 3),
            "peak_rss_mb": peak,
            "files": summary.files_committed or summary.files_produced,
            "chunks": summary.chunks_total,
            "targets": TARGETS,
            "met": bool(
                ok
                and summary.total_rows == rows
                and ratio >= TARGETS["ratio_min"]
                and peak.get("worker", 0.0) <= TARGETS["worker_rss_max_mb"]
            ),
        }
        if not ok:
            report["error_message"] = summary.error_message
        stack.stop()
        stack = None
        log("API calls: plaintext with auth off vs TLS + token vs mutual TLS (bench/auth.py)")
        report["api_auth"] = asyncio.run(auth_bench.measure())
        log("the export with authentication and TLS off vs on (bench/secured.py)")
        report["export_auth"] = secured.measure(work / "auth", spec, EXPORT_RUNS, timed_export)
        print(json.dumps(report, indent=2))
        return 0 if ok else 2
    finally:
        if stack is not None:
            stack.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
