"""`make bench`, MariaDB: the `bench` table from a throwaway MariaDB server through the whole
stack, beside raw reads of the same rows, in the same run.

The table has bench's columns in MariaDB's types (bigint key, int, varchar, decimal(12,2),
JSON, timestamp(6)). Each round runs, alternating:
- `client_text`: the server's own client (`mariadb --quick --batch`) reading every row as
  text into /dev/null, one session: no conversion, no file (the fastest raw read);
- `connectorx_processes`: the reader Sluiceway uses, bare, in 2 processes over 20 key ranges
  into nothing (Arrow batches, no Parquet);
- `sluiceway`: the export through the stack (2 workers, 20 key-range chunks, zstd Parquet,
  manifest and reconciliation).
The report gives each one's best and readings, and the ratios reference best / Sluiceway best
(above 1: Sluiceway is faster).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import references
from tests.support.localmaria import LocalMariaDB

URL_ENV = "BENCH_MY_URL"
TABLE = "bench"

CREATE = """
DROP TABLE IF EXISTS bench;
CREATE TABLE bench (
  id bigint PRIMARY KEY, qty int NOT NULL, label varchar(64), amount decimal(12,2),
  attrs json, created_at timestamp(6) NOT NULL DEFAULT '2024-01-01 00:00:00'
) CHARACTER SET utf8mb4;
INSERT INTO bench SELECT seq, (seq * 7919) % 1000,
  IF(seq % 17 = 0, NULL, CONCAT('label-', MD5(seq))), ((seq * 104729) % 10000000) / 100,
  JSON_OBJECT('k', seq % 100, 'tag', CONCAT('t', seq % 13), 'ok', seq % 2 = 0),
  TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND
FROM seq_1_to_{rows};
ANALYZE TABLE bench;
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def start(rows: int) -> LocalMariaDB:
    """The server with the table loaded; its URL in URL_ENV (for the stack's environment)."""
    server = LocalMariaDB().start(settings={"innodb-buffer-pool-size": "1G"})
    t0 = time.perf_counter()
    server.sql_admin(CREATE.format(rows=int(rows)))
    log(f"mariadb bench: {rows:,} rows loaded in {time.perf_counter() - t0:.1f}s")
    os.environ[URL_ENV] = server.url
    return server


def client_text(server: LocalMariaDB) -> dict[str, Any]:
    """Every row as text through the server's own client (unbuffered), into /dev/null."""
    args = ["mariadb", "--no-defaults", f"--socket={server.socket}", "-u", "root"]
    args += ["-D", server.database, "--quick", "--batch", "--raw", "--skip-column-names"]
    args += ["-e", f"SELECT * FROM {TABLE}"]
    t0 = time.perf_counter()
    with subprocess.Popen(args, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
    return {"seconds": time.perf_counter() - t0, "rows": lines}


def _read_range(url: str, low: int, high: int) -> int:
    import connectorx as cx

    query = f"SELECT * FROM {TABLE} WHERE id >= {low} AND id < {high}"
    reader = cx.read_sql(url, query, return_type="arrow_stream", batch_size=65_536)
    return sum(b.num_rows for b in reader)


def connectorx_processes(
    server: LocalMariaDB, rows: int, processes: int, ranges: int
) -> dict[str, Any]:
    """ConnectorX alone, `processes` processes over `ranges` id ranges, batches dropped."""
    size = -(-rows // ranges)
    bounds = [(1 + i * size, 1 + (i + 1) * size) for i in range(ranges)]
    url = server.url + "?prefer_socket=false"
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_read_range, [url] * processes, [1] * processes, [2] * processes))  # warm
        t0 = time.perf_counter()
        got = sum(pool.map(_read_range, [url] * ranges, *zip(*bounds, strict=True)))
        return {"seconds": time.perf_counter() - t0, "rows": got}


CONFIG = """
version: 1
exports:
  - name: mariadb-bench
    source: {{engine: mysql, url_env: {url_env}}}
    table: {table}
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    format: parquet
    compression: zstd
    destination: out
"""


def measure(
    server: LocalMariaDB,
    rows: int,
    *,
    rounds: int,
    chunks: int,
    workers: int,
    work: Path,
    export: Any,
    load_config: Any,
) -> dict[str, Any]:
    """Alternating rounds of the references and the export (`export(spec)` -> a reading)."""
    cfg = work / "mariadb-bench.yaml"
    cfg.write_text(
        CONFIG.format(url_env=URL_ENV, table=TABLE, chunk_size=max(1, -(-rows // chunks)))
    )
    spec = load_config(str(cfg), "mariadb-bench")
    steps = [
        ("client_text", lambda: client_text(server)),
        ("connectorx_processes", lambda: connectorx_processes(server, rows, workers, chunks)),
        ("sluiceway", lambda: export(spec)),
    ]
    readings: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        for name, step in steps[r % len(steps) :] + steps[: r % len(steps)]:
            got = step()
            readings.setdefault(name, []).append(got)
            log(f"mariadb round {r + 1}/{rounds}: {name} {got['seconds']:.2f}s")
            if got.get("status", "SUCCEEDED") != "SUCCEEDED":
                raise RuntimeError(f"mariadb: {name} {got['status']}: {got.get('error_message')}")
    report: dict[str, Any] = {
        "rows": int(server.sql_admin(f"SELECT COUNT(*) FROM {TABLE}")),
        **{name: references.best_of(got) for name, got in readings.items()},
    }
    best = report["sluiceway"]["seconds"]
    report["ratios"] = {
        f"{ref}_vs_sluiceway": round(report[ref]["seconds"] / best, 3)
        for ref in ("client_text", "connectorx_processes")
    }
    report["rows_equal"] = all(
        g["rows"] == report["rows"] for got in readings.values() for g in got
    )
    return report
