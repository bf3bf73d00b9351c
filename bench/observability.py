"""What tracing and metrics cost: the same PostgreSQL export with telemetry off and on.

`make bench-observability` loads BENCH_ROWS (default 500,000) rows into a throwaway PostgreSQL
and starts two stacks (planner, committer, tracker, 2 workers each): one with telemetry off (no
OTEL_* variable, no metrics endpoint), one with it on (spans exported over OTLP/gRPC to a local
receiver, /metrics served and scraped every second, a pessimistic interval). After one warm-up
export each, exports (10 chunks, Parquet/zstd) alternate between them for BENCH_ROUNDS rounds
(default 3). Prints one JSON report: every reading, the best of each mode,
the ratio best-off / best-on (1.0 = no cost), and the CPU seconds the services used per run
(less sensitive than wall time to other work on the machine).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import psycopg

from sluiceway.cli import stack as stackmod
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.localpg import LocalPostgres
from tests.support.otlp import OtlpReceiver

URL_ENV = "BENCH_PG_URL"
CHUNKS = 10
TERMINAL = (
    events_pb2.RUN_STATUS_SUCCEEDED,
    events_pb2.RUN_STATUS_FAILED,
    events_pb2.RUN_STATUS_CANCELED,
)
CONFIG = """
exports:
  - name: bench
    source: {{engine: postgres, url_env: {url_env}}}
    table: public.bench_otel
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    format: parquet
    compression: zstd
    destination: {dest}
"""


def log(msg: str) -> None:
    print(f"[bench-observability] {msg}", file=sys.stderr, flush=True)


def create_table(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS bench_otel")
        con.execute(
            "CREATE TABLE bench_otel (id bigint PRIMARY KEY, customer integer, name text, "
            "amount numeric(12,2), created_at timestamptz)"
        )
        con.execute(
            "INSERT INTO bench_otel SELECT g, (g * 7919) % 100000, 'customer ' || g, "
            "((g * 37) % 1000000) / 100.0, timestamptz '2026-01-01' + g * interval '7 seconds' "
            f"FROM generate_series(1::bigint, {rows}) g"
        )
        con.execute("VACUUM (FREEZE, ANALYZE) bench_otel")
        con.execute("CHECKPOINT")


class Scraper:
    """Scrapes every /metrics endpoint once a second, as Prometheus would."""

    def __init__(self, addrs: list[str]) -> None:
        self._addrs = addrs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for addr in self._addrs:
                with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
                    r.read()
                self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def start(work: Path, mode: str, receiver: OtlpReceiver) -> stackmod.Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("SLUICEWAY_METRICS_ADDR", None)
    if mode == "on":
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0",
            }
        )
    return stackmod.start_stack(work / f"state-{mode}", workers=2, env=env)


def metrics_addrs(stack: stackmod.Stack) -> list[str]:
    state = Path(stack.state.state_dir)
    addrs = [
        json.loads((state / "run" / f"{p.name}.json").read_text()).get("metrics_addr", "")
        for p in stack.state.processes
        if p.service != "nats-server"
    ]
    return [a for a in addrs if a]


def export_once(stack: stackmod.Stack, dest: Path, rows: int) -> tuple[float, float]:
    """(wall seconds from submit to the terminal state, CPU seconds of the services)."""
    config = CONFIG.format(url_env=URL_ENV, chunk_size=-(-rows // CHUNKS), dest=dest)
    pids = [p.pid for p in stack.state.processes if p.service != "nats-server"]
    with (
        grpc.insecure_channel(stack.state.control_addr) as control,
        grpc.insecure_channel(stack.state.tracker_addr) as tracker,
    ):
        cpu_before = cpu_seconds(pids)
        began = time.monotonic()
        auth = (("authorization", f"Bearer {stack.token()}"),) if stack.token() else ()
        run_id = (
            control_pb2_grpc.ControlStub(control)
            .SubmitRun(
                control_pb2.SubmitRunRequest(
                    config=control_pb2.ConfigDocument(text=config, file_name="bench.yaml")
                ),
                timeout=30,
                metadata=auth,
            )
            .run_id
        )
        stub = tracker_pb2_grpc.TrackerStub(tracker)
        deadline = began + 600
        while time.monotonic() < deadline:
            try:
                run = stub.GetRun(
                    tracker_pb2.GetRunRequest(run_id=run_id), timeout=5, metadata=auth
                )
            except grpc.RpcError:
                run = None
            if run is not None and run.status in TERMINAL:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"run {run_id} did not end in 600 s")
        took = time.monotonic() - began
        cpu = cpu_seconds(pids) - cpu_before
    if run.status != events_pb2.RUN_STATUS_SUCCEEDED or run.total_rows != rows:
        raise RuntimeError(f"run {run_id}: {run.status} {run.total_rows} {run.error_message}")
    return took, cpu


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> int:
    rows = int(os.environ.get("BENCH_ROWS", "500000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    pg = LocalPostgres()
    receiver = OtlpReceiver().start()
    try:
        pg.start()
        os.environ[URL_ENV] = pg.url  # the URL reaches the services only as a variable
        log(f"loading {rows:,} rows")
        create_table(pg.url, rows)
        readings: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        with tempfile.TemporaryDirectory(prefix="bench-otel-") as tmp:
            work = Path(tmp)
            stacks = {mode: start(work, mode, receiver) for mode in ("off", "on")}
            try:
                with Scraper(metrics_addrs(stacks["on"])):
                    for mode in ("off", "on"):  # warm-up: first imports, connections, plans
                        export_once(stacks[mode], work / f"warm-{mode}", rows)
                    for i in range(rounds):
                        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                            took, used = export_once(stacks[mode], work / f"r{i}-{mode}", rows)
                            readings[mode].append(round(took, 3))
                            cpu[mode].append(round(used, 3))
                            log(f"round {i + 1} telemetry {mode}: {took:.2f} s, {used:.2f} CPU-s")
            finally:
                for stack in stacks.values():
                    stack.stop()
        best = {mode: min(values) for mode, values in readings.items()}
        report = {
            "rows": rows,
            "chunks": CHUNKS,
            "workers": 2,
            "seconds": readings,
            "best_s": best,
            "ratio_off_over_on": round(best["off"] / best["on"], 3),
            "service_cpu_seconds": cpu,
            "cpu_ratio_on_over_off": round(min(cpu["on"]) / min(cpu["off"]), 3),
            "spans_received": len(receiver.spans),
        }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        receiver.stop()
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
