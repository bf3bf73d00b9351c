"""References that `make bench` measures beside Sluiceway: DuckDB's postgres scanner, plain ADBC.

    python -m bench.references [demo]      # small bench/wide/uuid tables, one run each (JSON)
    python -m bench.references full        # default sizes, references alternating, best of 2
    python -m bench.references venv        # only create .venv-bench (`make bench-venv`)

Each reference runs in child processes of its own, which report their own peak RSS (VmHWM;
bench/childproc.py says why not wait4's ru_maxrss). The PostgreSQL password never travels in
argv: children get a password-less DSN and PGPASSWORD in their environment, and whatever they
print is scrubbed before it reaches an exception.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.childproc import DSN_ENV, Child, Secrets, peak_rss_mb, wait_all
from bench.childproc import ROOT as ROOT  # the repository; public here (bench/run.py uses it)

BENCH_VENV = ".venv-bench"
# DuckDB for the reference only (the project pins its own duckdb); the extension comes as a
# wheel because nothing but PyPI is reachable: it is LOADed from its file, never INSTALLed
BENCH_REQUIREMENTS = ("duckdb==1.4.4", "duckdb-ext-postgres==1.4.4.20260205")
EXTENSION_GLOB = (
    "lib/python*/site-packages/duckdb_ext/extensions/v1.4.4/*/postgres_scanner.duckdb_extension"
)
BATCH_HINT_BYTES = 16 << 20  # Sluiceway's default ADBC batch hint
TIMEOUT_S = 1800.0
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# rows for a heap + TOAST (pg_relation_size of both) near the 5M-row bench heap's ~730 MB:
# wide rows take ~7.7 kB (1.7 kB heap, 6 kB TOAST), uuid rows ~155 B, bench rows ~147 B
DEFAULT_ROWS = {"bench": 5_000_000, "wide": 95_000, "uuid": 4_750_000}
DEMO_ROWS = 200_000


def log(msg: str) -> None:
    print(f"[references] {msg}", file=sys.stderr, flush=True)


# ---- the benchmark virtualenv ----------------------------------------------------------------


def postgres_extension(venv: Path) -> Path:
    """The postgres_scanner extension file that the duckdb-ext-postgres wheel installed."""
    found = sorted(venv.glob(EXTENSION_GLOB))
    if not found:
        raise FileNotFoundError(f"no postgres_scanner extension under {venv} ({EXTENSION_GLOB})")
    return found[0]


def ensure_bench_venv(root: Path, python: str = sys.executable) -> Path:
    """`<root>/.venv-bench` with exactly BENCH_REQUIREMENTS; a stamp makes a second call free.

    `python` defaults to the interpreter running this (the project's Python version, for which
    the pinned wheels exist) rather than whatever `python3` is first on PATH."""
    venv = root / BENCH_VENV
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    want = "\n".join(BENCH_REQUIREMENTS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        try:
            postgres_extension(venv)
            return venv
        except FileNotFoundError:
            pass
    if not py.exists():
        log(f"creating {venv}")
        _run_step([python, "-m", "venv", str(venv)], timeout_s=300)
    log(f"installing {' '.join(BENCH_REQUIREMENTS)} into {venv}")
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run_step([*pip, *BENCH_REQUIREMENTS], timeout_s=900)
    log(f"extension: {postgres_extension(venv)}")
    stamp.write_text(want)
    return venv


def _run_step(argv: list[str], timeout_s: float) -> None:
    # stdout goes to stderr too: `make bench` keeps stdout for its JSON report
    out = subprocess.run(argv, stdout=sys.stderr, stderr=subprocess.PIPE, timeout=timeout_s)
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {out.returncode}: {err[-4000:]}")
    sys.stderr.write(out.stderr.decode("utf-8", "replace"))


# ---- references ------------------------------------------------------------------------------


def qualified(table: str) -> str:
    """`public."<table>"`, for plain identifiers only (the references build SQL text)."""
    if not IDENT.fullmatch(table):
        raise ValueError(f"table name must be a plain identifier, not {table!r}")
    return f'public."{table}"'


def count_rows(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as con:
        row = con.execute(f"SELECT count(*) FROM {qualified(table)}").fetchone()
        return int(row[0]) if row else 0


def copy_binary(url: str, table: str) -> dict[str, Any]:
    """bench/run.py's reference for any table: `COPY (SELECT * FROM t) TO STDOUT (FORMAT binary)`
    read fully, in this process (nothing decoded, nothing written)."""
    import psycopg

    sql = f"COPY (SELECT * FROM {qualified(table)}) TO STDOUT (FORMAT binary)"
    with psycopg.connect(url) as con, con.cursor() as cur:
        t0 = time.perf_counter()
        n = 0
        with cur.copy(sql) as copy:
            for block in copy:
                n += len(block)
        return {"reference": "copy_binary", "seconds": time.perf_counter() - t0, "copy_bytes": n}


# runs in the bench venv (DuckDB 1.4.4, no project code); its DSN comes in DSN_ENV
DUCKDB_CHILD = """\
import json, os, sys, time
import duckdb
ext, table, out, threads = sys.argv[1:5]
q = lambda s: "'" + s.replace("'", "''") + "'"
t0 = time.monotonic()
con = duckdb.connect(config={"autoinstall_known_extensions": False,
                             "autoload_known_extensions": False})
con.execute("LOAD " + q(ext))
con.execute("SET threads=%d" % int(threads))
con.execute("ATTACH " + q(os.environ["BENCH_REF_PG_DSN"]) + " AS pg (TYPE postgres, READ_ONLY)")
con.execute('DESCRIBE pg.public."%s"' % table).fetchall()
t1 = time.monotonic()
con.execute('COPY (SELECT * FROM pg.public."%s") TO %s (FORMAT parquet, COMPRESSION zstd)'
            % (table, q(out)))
t2 = time.monotonic()
rows = con.execute("SELECT count(*) FROM read_parquet(?)", [out]).fetchone()[0]
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) * 1024 / 1e6 if hwm else None  # as childproc.peak_rss_mb()
print(json.dumps({"connect_s": t1 - t0, "copy_s": t2 - t1, "rows": rows, "peak_rss_mb": peak,
                  "duckdb": duckdb.__version__}))
"""


def duckdb_scanner(
    venv: Path,
    url: str,
    table: str,
    out_path: Path,
    threads: int = 2,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """DuckDB 1.4.4 (the bench venv) COPYing the table to one zstd Parquet file through the
    postgres scanner. `seconds` is the COPY alone; `connect_s` is LOAD + ATTACH + catalog."""
    qualified(table)
    secrets = Secrets.from_url(url)
    expected = count_rows(url, table)
    out_path.unlink(missing_ok=True)
    argv = [str(venv / "bin" / "python"), "-c", DUCKDB_CHILD]
    argv += [str(postgres_extension(venv)), table, str(out_path), str(threads)]
    child = Child.spawn(f"duckdb_scanner({table})", argv, secrets.env())
    wait_all([child], secrets, timeout_s)
    got = child.result()
    if got["rows"] != expected:
        raise RuntimeError(f"duckdb_scanner wrote {got['rows']} rows of {table}, not {expected}")
    return {
        "reference": "duckdb_scanner",
        "table": table,
        "rows": got["rows"],
        "seconds": got["copy_s"],
        "connect_s": got["connect_s"],
        "wall_s": child.wall_s,
        "peak_rss_mb": got["peak_rss_mb"],
        "bytes": out_path.stat().st_size,
        "threads": threads,
        "duckdb": got["duckdb"],
    }


def range_predicates(url: str, table: str, kind: str, ranges: int, key: str = "id") -> list[str]:
    """`ranges` WHERE clauses covering the table: equal-width ranges of the integer `key`
    (kind "key"), or of heap blocks as TID range scans (kind "ctid"); the first has no lower
    bound and the last no upper one."""
    import psycopg

    if kind == "key" and not _has_integer_id(url, table, key):
        raise ValueError(f"{table} has no integer column {key!r}: use range kind 'ctid'")
    with psycopg.connect(url) as con:
        if kind == "key":
            sql = f'SELECT min("{key}"), max("{key}") FROM {qualified(table)}'
            lo, hi = con.execute(sql).fetchone() or (None, None)
            if lo is None or hi is None:
                raise ValueError(f"{table} has no rows to split by {key!r}")
            step = -(-(hi - lo + 1) // ranges)
            cuts = [lo + i * step for i in range(1, ranges)]
            col = f'"{key}"'
        elif kind == "ctid":
            row = con.execute(
                "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                (qualified(table),),
            ).fetchone()
            blocks = int(row[0]) if row else 0
            step = max(1, -(-blocks // ranges))
            cuts = [i * step for i in range(1, ranges)]
            col = "ctid"
        else:
            raise ValueError(f"range kind must be 'key' or 'ctid', not {kind!r}")

    def bound(v: int) -> str:
        return str(v) if kind == "key" else f"'({v},0)'::tid"

    lows = [None, *cuts]
    highs = [*cuts, None]
    preds = []
    for a, b in zip(lows, highs, strict=True):
        parts = [
            f"{col} >= {bound(a)}" if a is not None else "",
            f"{col} < {bound(b)}" if b is not None else "",
        ]
        preds.append(" AND ".join(p for p in parts if p) or "TRUE")
    return preds


def adbc_processes(
    url: str,
    table: str,
    out_dir: Path,
    processes: int = 2,
    ranges: int = 20,
    range_kind: str | None = None,
    python: str = sys.executable,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """Plain ADBC: `processes` children of the project venv, process p reading ranges p,
    p + processes, ... with `fetch_record_batch()` into one zstd Parquet file per range.
    range_kind None: "key" (id) when the table has an integer id, else "ctid". `seconds` runs
    from the first child's connected session to the last child's end."""
    secrets = Secrets.from_url(url)
    kind = range_kind or ("key" if _has_integer_id(url, table) else "ctid")
    preds = range_predicates(url, table, kind, ranges)
    expected = count_rows(url, table)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    children = []
    for p in range(processes):
        mine = [[i, preds[i]] for i in range(p, len(preds), processes)]
        argv = [python, "-m", "bench.references", "adbc-worker", table, str(out_dir)]
        argv.append(json.dumps(mine))
        children.append(Child.spawn(f"adbc_processes({table}) #{p}", argv, secrets.env()))
    wait_all(children, secrets, timeout_s)
    got = [c.result() for c in children]
    rows = sum(g["rows"] for g in got)
    if rows != expected:
        raise RuntimeError(f"adbc_processes wrote {rows} rows of {table}, not {expected}")
    files = sorted(out_dir.glob("part-*.parquet"))
    return {
        "reference": "adbc_processes",
        "table": table,
        "range_kind": kind,
        "rows": rows,
        "seconds": max(g["end"] for g in got) - min(g["ready"] for g in got),
        "connect_s": max(g["connect_s"] for g in got),
        "wall_s": max(c.wall_s for c in children),
        "peak_rss_mb": max(g["peak_rss_mb"] or 0.0 for g in got) or None,
        "peak_rss_mb_each": [g["peak_rss_mb"] for g in got],
        "bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
        "processes": processes,
        "ranges": len(preds),
    }


def _has_integer_id(url: str, table: str, key: str = "id") -> bool:
    import psycopg

    if not IDENT.fullmatch(key):
        raise ValueError(f"key must be a plain identifier, not {key!r}")
    with psycopg.connect(url) as con:
        row = con.execute(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
            (qualified(table), key),
        ).fetchone()
    return bool(row and row[0] in ("bigint", "integer", "smallint"))


def adbc_worker(table: str, out_dir: Path, ranges: list[tuple[int, str]]) -> dict[str, Any]:
    """One ADBC process (the child side of adbc_processes): one session, its ranges in turn."""
    import adbc_driver_postgresql.dbapi as pgdb
    import pyarrow.parquet as pq

    t0 = time.monotonic()
    rows = 0
    with pgdb.connect(os.environ[DSN_ENV], autocommit=True) as con, con.cursor() as cur:
        # one backend per reader and no JIT, as Sluiceway's reading sessions
        cur.execute("SET max_parallel_workers_per_gather = 0")
        cur.execute("SET jit = off")
        cur.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_HINT_BYTES)}
        )
        ready = time.monotonic()
        for index, where in ranges:
            cur.execute(f"SELECT * FROM {qualified(table)} WHERE {where}")
            reader = cur.fetch_record_batch()
            path = out_dir / f"part-{index:03d}.parquet"
            with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        end = time.monotonic()
    # time.monotonic is CLOCK_MONOTONIC: one clock for every process of the machine
    return {
        "rows": rows,
        "connect_s": ready - t0,
        "ready": ready,
        "end": end,
        "peak_rss_mb": peak_rss_mb(),
    }


# ---- measuring -------------------------------------------------------------------------------


def measure(
    venv: Path,
    url: str,
    table: str,
    work: Path,
    rounds: int = 2,
    range_kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The references on one table, alternating (COPY, DuckDB, ADBC per round, as bench/run.py
    alternates COPY and export): each reference's best run by `seconds`, with every reading."""
    kinds = list(range_kinds or [("key" if _has_integer_id(url, table) else "ctid")])
    runs: dict[str, list[dict[str, Any]]] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("copy_binary", lambda: copy_binary(url, table)),
        ("duckdb_scanner", lambda: duckdb_scanner(venv, url, table, work / f"{table}.parquet")),
    ]
    for kind in kinds:
        name = "adbc_processes" if kind == kinds[0] else f"adbc_processes_{kind}"
        out = work / f"{table}-adbc-{kind}"
        steps.append((name, partial(adbc_processes, url, table, out, range_kind=kind)))
    for r in range(rounds):
        for name, step in steps:
            got = step()
            runs.setdefault(name, []).append(got)
            log(f"{table} round {r + 1}: {name} {got['seconds']:.2f}s")
    (work / f"{table}.parquet").unlink(missing_ok=True)
    for kind in kinds:
        shutil.rmtree(work / f"{table}-adbc-{kind}", ignore_errors=True)
    return {name: best_of(readings) for name, readings in runs.items()}


def best_of(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """The reading with the fewest `seconds`, with every reading's seconds as `runs_s`."""
    best = dict(min(readings, key=lambda g: g["seconds"]))
    best["runs_s"] = [round(g["seconds"], 3) for g in readings]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in best.items()}


def _loaders() -> dict[str, Callable[[str, int], None]]:
    from bench import shapes

    return shapes.LOADERS


def run_shapes(shapes: Sequence[str], rows: int | None, rounds: int, both_kinds: bool) -> int:
    """Start a throwaway PostgreSQL, load each shape, measure the references; JSON on stdout."""
    from bench.shapes import table_sizes
    from tests.support.localpg import LocalPostgres

    venv = ensure_bench_venv(ROOT)
    loaders = _loaders()
    work = Path(tempfile.mkdtemp(prefix="sluiceway-refs-"))
    pg = LocalPostgres()
    try:
        pg.start()
        report: dict[str, Any] = {"rounds": rounds, "shapes": {}}
        for shape in shapes:
            n = rows or DEFAULT_ROWS[shape]
            log(f"loading {shape}: {n:,} rows")
            t0 = time.perf_counter()
            loaders[shape](pg.url, n)
            entry: dict[str, Any] = {"rows": n, "load_s": round(time.perf_counter() - t0, 1)}
            entry["sizes"] = table_sizes(pg.url, shape)
            log(f"{shape}: {entry['sizes']}")
            kinds = None
            if both_kinds and _has_integer_id(pg.url, shape):
                kinds = ["key", "ctid"]
            entry.update(measure(venv, pg.url, shape, work, rounds, kinds))
            report["shapes"][shape] = entry
        print(json.dumps(report, indent=2))
        return 0
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.references", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    for name, help_ in (
        ("demo", f"small shapes ({DEMO_ROWS:,} rows), one run of each reference"),
        ("full", f"default sizes {DEFAULT_ROWS}, references alternating"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--rows", type=int, help="rows of every shape")
        p.add_argument("--rounds", type=int, default=1 if name == "demo" else 2)
        p.add_argument("--shapes", default="bench,wide,uuid")
    sub.add_parser("venv", help=f"create {BENCH_VENV} (idempotent)")
    w = sub.add_parser("adbc-worker", help="internal: one process of adbc_processes")
    w.add_argument("table")
    w.add_argument("out_dir", type=Path)
    w.add_argument("ranges", help="JSON [[index, where], ...]")
    args = ap.parse_args(argv)
    if args.cmd == "venv":
        log(f"ready: {ensure_bench_venv(ROOT)}")
        return 0
    if args.cmd == "adbc-worker":
        ranges = [(int(i), str(w)) for i, w in json.loads(args.ranges)]
        print(json.dumps(adbc_worker(args.table, args.out_dir, ranges)))
        return 0
    if args.cmd is None:
        args = ap.parse_args(["demo", *(argv or [])])
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = set(shapes) - set(DEFAULT_ROWS)
    if unknown:
        ap.error(f"unknown shapes {sorted(unknown)}; known: {sorted(DEFAULT_ROWS)}")
    rows = args.rows or (DEMO_ROWS if args.cmd == "demo" else None)
    return run_shapes(shapes, rows, args.rounds, both_kinds=args.cmd == "demo")


if __name__ == "__main__":
    sys.exit(main())
