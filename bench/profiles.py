"""`make bench-profiles`: the same export under each tuning profile, against a binary COPY.

Loads the `make bench` table (bench/run.py's setup), starts one stack (2 workers), then in each
round reads the reference COPY once and runs the export once per profile, the profiles' order
rotating from round to round. Prints one JSON report on stdout (progress on stderr): per
profile the best wall time, its ratio against the best COPY of the same run, the worker's peak
RSS, and what the source did: peak client backends on the database, the server processes' CPU
seconds, statements and their execution time (pg_stat_statements), temporary bytes.

BENCH_ROWS (default 1,000,000), BENCH_ROUNDS (3) and BENCH_CHUNKS (4: chunks of 250k rows, so
that the profiles' batch sizes differ within a chunk) change the size.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import (
    URL_ENV,
    RssSampler,
    bench_spec,
    log,
    reference_copy,
    timed_export,
)
from bench.shapes import create_bench
from bench.source_stats import SourceSampler, statements
from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import connect, stack_endpoints
from sluiceway.client import Client
from sluiceway.v1 import events_pb2
from tests.support.localpg import LocalPostgres

PROFILES = ("fast", "balanced", "safe")


def one_export(client: Client, spec: Any, pg: LocalPostgres, stack: stackmod.Stack) -> dict:
    statements(pg.url, reset=True)
    with RssSampler.of_stack(stack.state) as rss, SourceSampler(pg) as source:
        wall, summary, run_id = timed_export(client, spec)
    calls, exec_ms = statements(pg.url)
    status = events_pb2.RunStatus.Name(summary.status).removeprefix("RUN_STATUS_")
    return {
        "run_id": run_id,
        "status": status,
        "error_message": summary.error_message,
        "wall_s": round(wall, 3),
        "rows": summary.total_rows,
        "worker_peak_rss_mb": round(rss.peak.get("worker", 0.0), 1),
        "source_peak_backends": source.peak_backends,
        "source_cpu_s": round(source.cpu_s, 2),
        "source_statements": calls,
        "source_exec_ms": round(exec_ms, 1),
        "pg_temp_bytes_delta": summary.pg_temp_bytes_delta,
        "batch_size": summary.batch_size,
        "batch_size_memory_mb": summary.batch_size_memory_mb,
    }


def main() -> int:
    rows = int(os.environ.get("BENCH_ROWS", "1000000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    chunks = int(os.environ.get("BENCH_CHUNKS", "4"))
    work = Path(tempfile.mkdtemp(prefix="sluiceway-bench-profiles-"))
    pg = LocalPostgres()
    stack: stackmod.Stack | None = None
    load_before = os.getloadavg()
    try:
        log(f"starting PostgreSQL; {rows:,} rows, {chunks} chunks, {rounds} rounds")
        pg.start(settings={"shared_preload_libraries": "pg_stat_statements"})
        pg.psql_admin("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        os.environ[URL_ENV] = pg.url  # the URL reaches the services only by this variable
        create_bench(pg.url, rows)
        specs = {
            p: bench_spec(work, rows, chunks, f"bench_{p}", f"    tuning_profile: {p}\n")
            for p in PROFILES
        }
        log("starting the stack (2 workers)")
        stack = stackmod.start_stack(work / "state", workers=2, env=dict(os.environ))
        ep = stack_endpoints(stack)
        copies: list[float] = []
        runs: dict[str, list[dict]] = {p: [] for p in PROFILES}
        with connect(ep) as client:
            for r in range(rounds):
                copies.append(reference_copy(pg.url)[0])
                log(f"round {r + 1}: reference binary COPY {copies[-1]:.2f}s")
                order = PROFILES[r % len(PROFILES) :] + PROFILES[: r % len(PROFILES)]
                for profile in order:
                    run = one_export(client, specs[profile], pg, stack)
                    runs[profile].append(run)
                    log(f"round {r + 1}: {profile}: {run['status']} in {run['wall_s']:.2f}s")
                    if run["status"] != "SUCCEEDED":
                        raise RuntimeError(f"{profile}: {run['status']}: {run['error_message']}")
            copies.append(reference_copy(pg.url)[0])
            log(f"reference binary COPY {copies[-1]:.2f}s")
        copy_s = min(copies)
        report: dict[str, Any] = {
            "rows": rows,
            "chunks": chunks,
            "workers": 2,
            "rounds": rounds,
            "reference_copy_s": round(copy_s, 3),
            "reference_copy_runs_s": [round(c, 3) for c in copies],
            "load_average_before_after": [
                [round(x, 2) for x in load_before],
                [round(x, 2) for x in os.getloadavg()],
            ],
            "cpu_count": os.cpu_count(),
            "profiles": {},
        }
        for profile in PROFILES:
            mine = runs[profile]
            best = min(mine, key=lambda run: run["wall_s"])
            report["profiles"][profile] = {
                "best_wall_s": best["wall_s"],
                "ratio_vs_copy": round(copy_s / best["wall_s"], 3),
                "wall_runs_s": [run["wall_s"] for run in mine],
                "worker_peak_rss_mb": max(run["worker_peak_rss_mb"] for run in mine),
                "batch_size": best["batch_size"],
                "batch_size_memory_mb": best["batch_size_memory_mb"],
                "source": {
                    "peak_client_backends": max(run["source_peak_backends"] for run in mine),
                    "cpu_s_best": min(run["source_cpu_s"] for run in mine),
                    "cpu_s_runs": [run["source_cpu_s"] for run in mine],
                    "statements": max(run["source_statements"] for run in mine),
                    "exec_ms_best": min(run["source_exec_ms"] for run in mine),
                    "temp_bytes_delta_max": max(run["pg_temp_bytes_delta"] for run in mine),
                },
                "rows_exported": best["rows"],
            }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        if stack is not None:
            stack.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
