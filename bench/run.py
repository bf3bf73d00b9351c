"""`make bench`: PostgreSQL -> Parquet through the whole stack, beside the references, in one run.

For each table shape (`bench`: the 5M-row table of ints, text, numeric, jsonb, timestamptz;
`wide`: a dozen long text columns, jsonb and arrays; `uuid`: a uuid primary key, no integer
key), each round runs, alternating: a binary COPY to nowhere (one session), DuckDB's postgres
scanner to zstd Parquet (2 threads, its own virtualenv: bench/references.py), plain ADBC in 2
processes over 20 ranges to zstd Parquet, and Sluiceway's export through the whole stack (2
workers, 20 chunks: key ranges where there is an integer key, and heap page ranges). Every
reference and export reports its best and all readings, and the report gives the ratios
(reference best / Sluiceway best: above 1 means Sluiceway is faster), peak RSS, where a chunk's
time goes (the workers' sluiceway_chunk_phase_seconds), what the server ran
(pg_stat_statements: reads, counts, others), its CPU, and the control plane's share of the wall
time (planning, commit, the workers' event appends), and around every step the machine's busy
CPU-seconds and idle share and each service's CPU-seconds (what saturates).

BENCH_ROWS scales every shape (default 5M rows of `bench`, the others sized to a similar heap),
BENCH_ROUNDS the rounds (3), BENCH_SHAPES the shapes (bench,wide,uuid). The PostgreSQL URL
reaches the services only through the BENCH_PG_URL environment variable. Then the cost of
security, in the same run: `api_auth` (bench/auth.py) and `export_auth` (bench/secured.py).
Then MariaDB (bench/mariadb.py; BENCH_MARIADB=0 leaves it out): the `bench` table from a
throwaway MariaDB server, beside the server's own client and the bare reader, in the same run.
Prints one JSON report on stdout; progress goes to stderr.
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
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import psycopg
from rich.console import Console

from bench import auth as auth_bench
from bench import mariadb, references, secured, shapes
from bench.source_stats import SourceSampler, statement_kinds, statements
from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import connect, stack_endpoints
from sluiceway.cli.main import follow, load_config
from sluiceway.client import Client
from sluiceway.common.phases import PHASES
from sluiceway.v1 import events_pb2
from tests.support.localpg import LocalPostgres

URL_ENV = "BENCH_PG_URL"
TARGETS = {
    "vs_duckdb_min": 1.0,
    "vs_adbc_min": 1.3,
    "worker_rss_max_mb": 200,
    "control_plane_share_max": 0.05,
}
CHUNKS = 20
WORKERS = 2
EXPORT_RUNS = int(os.environ.get("BENCH_EXPORT_RUNS", "2"))  # export_auth's exports
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BENCH_ROWS = 5_000_000

CONFIG = """
version: 1
exports:
  - name: {name}
    source: {{engine: postgres, url_env: {url_env}}}
    table: public.{table}
    mode: chunked
{chunking}    format: parquet
    compression: zstd
    destination: out
{extra}"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def reference_copy(url: str) -> tuple[float, int]:
    """Seconds to read `COPY (SELECT * FROM bench) TO STDOUT (FORMAT binary)` fully."""
    got = references.copy_binary(url, "bench")
    return got["seconds"], got["copy_bytes"]


def bench_spec(
    work: Path,
    rows: int,
    chunks: int,
    name: str = "bench",
    extra: str = "",
    *,
    table: str = "bench",
    pages: bool = False,
) -> Any:
    """The export of `table` in `chunks` ranges (integer key ranges of `id`, or with `pages`
    ranges of heap blocks), resolved as the CLI does; `extra` adds indented config lines."""
    if pages:
        chunking = f"    chunk_by: pages\n    chunk_count: {chunks}\n"
    else:
        chunking = f"    chunk_column: id\n    chunk_size: {max(1, -(-rows // chunks))}\n"
    cfg = work / f"{name}.yaml"
    cfg.write_text(
        CONFIG.format(name=name, url_env=URL_ENV, table=table, chunking=chunking, extra=extra)
    )
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
    """Peak RSS (MB) per service of `procs` ((service, process) pairs), sampled every 0.2 s;
    processes of one service (the workers) are folded into one max."""

    def __init__(self, procs: list[tuple[str, psutil.Process]], every_s: float = 0.2) -> None:
        self.procs = procs
        self.peak: dict[str, float] = {}
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def of_stack(cls, state: stackmod.StackState) -> RssSampler:
        """Every service of a stack, nats-server aside."""
        procs = []
        for p in state.processes:
            if p.service == "nats-server":
                continue
            try:
                procs.append((p.service, psutil.Process(p.pid)))
            except psutil.NoSuchProcess:
                pass
        return cls(procs)

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


class CpuMeter:
    """CPU-seconds over one step: the whole machine's busy time and idle share (is the CPU the
    limit?), and each stack service's own (workers summed), to name what saturates."""

    def __init__(self, procs: list[tuple[str, psutil.Process]]) -> None:
        self.procs = procs
        self.report: dict[str, Any] = {}

    @staticmethod
    def _proc_s(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def __enter__(self) -> CpuMeter:
        self._machine = psutil.cpu_times()
        self._procs = [self._proc_s(p) for _, p in self.procs]
        return self

    def __exit__(self, *exc: object) -> None:
        now = psutil.cpu_times()
        idle = (now.idle - self._machine.idle) + (now.iowait - self._machine.iowait)
        total = sum(now) - sum(self._machine)
        services: dict[str, float] = {}
        for (service, proc), before in zip(self.procs, self._procs, strict=True):
            services[service] = services.get(service, 0.0) + self._proc_s(proc) - before
        self.report = {
            "machine_busy_cpu_s": round(total - idle, 2),
            "machine_idle_share": round(idle / total, 3) if total > 0 else 0.0,
            "service_cpu_s": {k: round(v, 2) for k, v in sorted(services.items())},
        }


# ---- what one export did ----------------------------------------------------------------------


def worker_phases(stack: stackmod.Stack) -> tuple[dict[str, float], int]:
    """(seconds per phase summed over every worker, attempts observed) from each worker's
    /metrics (sluiceway_chunk_phase_seconds)."""
    totals = dict.fromkeys(PHASES, 0.0)
    attempts = 0
    for p in stack.state.processes:
        if p.service != "worker":
            continue
        ready = json.loads((Path(stack.state.state_dir) / "run" / f"{p.name}.json").read_text())
        with urllib.request.urlopen(f"http://{ready['metrics_addr']}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("sluiceway_chunk_phase_seconds_sum{"):
                phase = line.split('phase="', 1)[1].split('"', 1)[0]
                totals[phase] += float(line.rsplit(" ", 1)[1])
            elif line.startswith('sluiceway_chunk_phase_seconds_count{phase="count"}'):
                attempts += int(float(line.rsplit(" ", 1)[1]))
    return totals, attempts


def control_plane(client: Client, run_id: str, events_s: float, wall_s: float) -> dict[str, Any]:
    """The control plane's part of a run's wall time, from its events' times: planning (the
    request to the first chunk started: introspection, plan, tasks, a worker taking one),
    commit (the last chunk completed to the run's end: validation, manifest), and the
    workers' event appends (their `events` phase, over WORKERS workers in parallel)."""
    times: dict[str, list[float]] = {}
    for stored in client.iter_events(run_id):
        at = stored.event.occurred_at.ToDatetime().timestamp()
        times.setdefault(stored.kind, []).append(at)
    plan_s = min(times["chunk_started"]) - min(times["requested"])
    commit_s = max(times["completed"]) - max(times["chunk_completed"])
    share = (plan_s + commit_s + events_s / WORKERS) / wall_s if wall_s else 0.0
    return {
        "planning_s": round(plan_s, 3),
        "commit_s": round(commit_s, 3),
        "events_s_per_worker": round(events_s / WORKERS, 3),
        "share_of_wall": round(share, 4),
    }


def one_export(
    client: Client, spec: Any, pg: LocalPostgres, stack: stackmod.Stack
) -> dict[str, Any]:
    """One export with everything measured around it."""
    statements(pg.url, reset=True)
    before, n_before = worker_phases(stack)
    with SourceSampler(pg) as source:
        wall, summary, run_id = timed_export(client, spec)
    after, n_after = worker_phases(stack)
    phases = {k: after[k] - before[k] for k in PHASES}
    attempts = max(1, n_after - n_before)
    ok = summary.status == events_pb2.RUN_STATUS_SUCCEEDED
    kinds = statement_kinds(pg.url)
    read_s = kinds.get("read", {}).get("exec_s", 0.0)
    count_s = kinds.get("count", {}).get("exec_s", 0.0)
    got: dict[str, Any] = {
        "seconds": wall,
        "status": events_pb2.RunStatus.Name(summary.status).removeprefix("RUN_STATUS_"),
        "rows": summary.total_rows,
        "reconciled": summary.reconciled,
        "bytes": summary.bytes_written,
        "files": summary.files_committed or summary.files_produced,
        "chunks": summary.chunks_total,
        "phases_s_total": {k: round(v, 3) for k, v in phases.items()},
        "phases_s_per_chunk": {k: round(v / attempts, 4) for k, v in phases.items()},
        "statements": kinds,
        # the reconciliation count's share of what the server ran for the ranges
        "count_share": round(count_s / (count_s + read_s), 4) if read_s else 0.0,
        "server_cpu_s": round(source.cpu_s, 2),
        "server_peak_backends": source.peak_backends,
    }
    if ok:
        got["control_plane"] = control_plane(client, run_id, phases["events"], wall)
    else:
        got["error_message"] = summary.error_message
    return got


def reading_of(client: Client, spec: Any, stack: stackmod.Stack) -> dict[str, Any]:
    """One export of a source other than the PostgreSQL cluster: wall time, outcome, and where
    the workers' time went."""
    before, n_before = worker_phases(stack)
    wall, summary, _ = timed_export(client, spec)
    after, n_after = worker_phases(stack)
    attempts = max(1, n_after - n_before)
    got: dict[str, Any] = {
        "seconds": wall,
        "status": events_pb2.RunStatus.Name(summary.status).removeprefix("RUN_STATUS_"),
        "rows": summary.total_rows,
        "reconciled": summary.reconciled,
        "bytes": summary.bytes_written,
        "phases_s_per_chunk": {k: round((after[k] - before[k]) / attempts, 4) for k in PHASES},
    }
    if summary.status != events_pb2.RUN_STATUS_SUCCEEDED:
        got["error_message"] = summary.error_message
    return got


# ---- one shape ----------------------------------------------------------------------------------


def holding_back(best: dict[str, Any]) -> str:
    """The phase with the most busy time in Sluiceway's best run (read and convert happen in
    the reader thread, encode in the writer: the larger side bounds the chunk)."""
    per = best.get("phases_s_per_chunk", {})
    return max(per, key=per.get) if per else ""  # type: ignore[arg-type]


def measure_shape(
    shape: str,
    rows: int,
    *,
    pg: LocalPostgres,
    client: Client,
    stack: stackmod.Stack,
    venv: Path,
    work: Path,
    rss: RssSampler,
) -> dict[str, Any]:
    url = pg.url
    integer_key = shape != "uuid"
    variants = {"sluiceway_pages": True, **({"sluiceway_keys": False} if integer_key else {})}
    specs = {
        name: bench_spec(work, rows, CHUNKS, name=f"{shape}-{name}", table=shape, pages=pages)
        for name, pages in variants.items()
    }
    readings: dict[str, list[dict[str, Any]]] = {}
    out = work / "references"
    steps: list[tuple[str, Any]] = [
        ("copy_binary", lambda: references.copy_binary(url, shape)),
        (
            "duckdb_scanner",
            lambda: references.duckdb_scanner(venv, url, shape, out / f"{shape}.parquet"),
        ),
        (
            "adbc_processes",
            lambda: references.adbc_processes(
                url, shape, out / "adbc", processes=WORKERS, ranges=CHUNKS
            ),
        ),
        *(
            (name, lambda spec=spec: one_export(client, spec, pg, stack))
            for name, spec in specs.items()
        ),
    ]
    rss.peak.clear()
    for r in range(ROUNDS):
        # the order rotates so that no step always follows the same one
        for name, step in steps[r % len(steps) :] + steps[: r % len(steps)]:
            with CpuMeter(rss.procs) as cpu:
                got = step()
            got["cpu"] = cpu.report
            readings.setdefault(name, []).append(got)
            log(f"{shape} round {r + 1}/{ROUNDS}: {name} {got['seconds']:.2f}s")
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if got.get("status", "SUCCEEDED") != "SUCCEEDED":
                raise RuntimeError(f"{shape}: {name} {got['status']}: {got.get('error_message')}")
    source_rows = references.count_rows(url, shape)
    report: dict[str, Any] = {
        "rows": source_rows,
        "sizes": shapes.table_sizes(url, shape),
        **{name: references.best_of(got) for name, got in readings.items()},
    }
    exports = {name: report[name] for name in variants}
    best_name = min(exports, key=lambda n: exports[n]["seconds"])
    best = exports[best_name]
    ratios = {
        f"{ref}_vs_{name}": round(report[ref]["seconds"] / exports[name]["seconds"], 3)
        for name in exports
        for ref in ("copy_binary", "duckdb_scanner", "adbc_processes")
    }
    worker_rss = round(rss.peak.get("worker", 0.0), 1)
    report["ratios"] = ratios
    report["best_export"] = best_name
    report["worker_peak_rss_mb"] = worker_rss
    report["service_peak_rss_mb"] = {k: round(v, 1) for k, v in sorted(rss.peak.items())}
    vs_duck = report["duckdb_scanner"]["seconds"] / best["seconds"]
    vs_adbc = report["adbc_processes"]["seconds"] / best["seconds"]
    report["vs_duckdb"] = round(vs_duck, 3)
    report["vs_adbc"] = round(vs_adbc, 3)
    report["holding_back"] = holding_back(best)
    report["met"] = bool(
        all(e["rows"] == source_rows for e in exports.values())
        and all(e["reconciled"] for e in exports.values())
        and vs_duck >= TARGETS["vs_duckdb_min"]
        and vs_adbc >= TARGETS["vs_adbc_min"]
        and worker_rss <= TARGETS["worker_rss_max_mb"]
        and best.get("control_plane", {}).get("share_of_wall", 1.0)
        <= TARGETS["control_plane_share_max"]
    )
    return report


def _rows_of(shape: str, scale: float) -> int:
    return max(1000, int(references.DEFAULT_ROWS[shape] * scale))


def main() -> int:
    scale = int(os.environ.get("BENCH_ROWS", str(BENCH_ROWS))) / BENCH_ROWS
    wanted = [s for s in os.environ.get("BENCH_SHAPES", "bench,wide,uuid").split(",") if s]
    unknown = set(wanted) - set(references.DEFAULT_ROWS)
    if unknown:
        raise SystemExit(f"BENCH_SHAPES: unknown shape(s) {sorted(unknown)}")
    venv = references.ensure_bench_venv(references.ROOT)
    work = Path(tempfile.mkdtemp(prefix="sluiceway-bench-"))
    pg = LocalPostgres()
    stack: stackmod.Stack | None = None
    maria = None
    with_mariadb = os.environ.get("BENCH_MARIADB", "1") != "0"
    try:
        if with_mariadb:
            log("starting MariaDB")
            maria = mariadb.start(_rows_of("bench", scale))
        log("starting PostgreSQL (with pg_stat_statements)")
        pg.start(settings={"shared_preload_libraries": "pg_stat_statements"})
        pg.psql_admin("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        # the URL holds a password: it only ever travels as an environment variable
        os.environ[URL_ENV] = pg.url
        with psycopg.connect(pg.url, autocommit=True) as con:
            con.execute(
                "CREATE TABLE warmup AS SELECT g::bigint AS id, md5(g::text) AS label "
                "FROM generate_series(1, 1000) AS g"
            )
        for shape in wanted:
            n, t0 = _rows_of(shape, scale), time.perf_counter()
            shapes.LOADERS[shape](pg.url, n)
            log(f"{shape}: {n:,} rows loaded in {time.perf_counter() - t0:.1f}s")

        log(f"starting the stack ({WORKERS} workers)")
        env = {**os.environ, "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0"}
        stack = stackmod.start_stack(work / "state", workers=WORKERS, env=env)
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
            "rounds": ROUNDS,
            "chunks": CHUNKS,
            "workers": WORKERS,
            "targets": TARGETS,
            "shapes": {},
        }
        with connect(stack_endpoints(stack)) as client, RssSampler.of_stack(stack.state) as rss:
            # a warm-up: every process's first export pays its imports and connections
            timed_export(client, bench_spec(work, 1000, 2, name="warmup", table="warmup"))
            for shape in wanted:
                report["shapes"][shape] = measure_shape(
                    shape,
                    _rows_of(shape, scale),
                    pg=pg,
                    client=client,
                    stack=stack,
                    venv=venv,
                    work=work,
                    rss=rss,
                )
            if maria is not None:
                rss.peak.clear()
                report["mariadb"] = mariadb.measure(
                    maria,
                    _rows_of("bench", scale),
                    rounds=ROUNDS,
                    chunks=CHUNKS,
                    workers=WORKERS,
                    work=work,
                    export=lambda spec: reading_of(client, spec, stack),
                    load_config=load_config,
                )
                report["mariadb"]["worker_peak_rss_mb"] = round(rss.peak.get("worker", 0.0), 1)
        report["met"] = all(s["met"] for s in report["shapes"].values())
        stack.stop()
        stack = None
        log("API calls: plaintext with auth off vs TLS + token vs mutual TLS (bench/auth.py)")
        report["api_auth"] = asyncio.run(auth_bench.measure())
        if "bench" in wanted:
            log("the export with authentication and TLS off vs on (bench/secured.py)")
            spec = bench_spec(work, _rows_of("bench", scale), CHUNKS)
            report["export_auth"] = secured.measure(work / "auth", spec, EXPORT_RUNS, timed_export)
        print(json.dumps(report, indent=2))
        return 0
    finally:
        if stack is not None:
            stack.stop()
        if maria is not None:
            maria.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
