"""`make demo`: export a generated 1M-row SQLite table through a local stack and verify it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa
from rich.console import Console

from sluiceway.cli import demodata, render
from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import connect, stack_endpoints
from sluiceway.cli.main import Failure, follow, grpc_failure, load_config
from sluiceway.client import SluicewayError
from sluiceway.common import layout
from sluiceway.v1 import events_pb2, tracker_pb2

ROOT = Path(__file__).resolve().parents[5]  # libs/cli/src/sluiceway/cli/demo.py -> repo root
CONFIG = ROOT / "examples" / "demo.yaml"
DEMO_DIR = ROOT / ".sluiceway" / "demo"
DB = DEMO_DIR / "demo.db"
STATE_DIR = DEMO_DIR / "stack"


class VerificationError(RuntimeError):
    pass


# ---- locating the result ---------------------------------------------------------------------


def manifest_file(summary: tracker_pb2.RunSummary, destination: str) -> Path:
    uri = summary.manifest_uri
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if uri and "://" not in uri:
        return Path(uri)
    return layout.manifest_path(destination, summary.export_name, summary.run_id)


def part_paths(manifest: dict[str, Any], manifest_path: Path, destination: str) -> list[Path]:
    """Absolute paths of the manifest's parts: a part path may be absolute, relative to the run
    directory, or relative to the destination."""
    out = []
    for part in manifest.get("parts", []):
        raw = str(part["path"])
        if raw.startswith("file://"):
            raw = unquote(urlparse(raw).path)
        p = Path(raw)
        if not p.is_absolute():
            for base in (manifest_path.parent, Path(destination)):
                if (base / p).is_file():
                    p = base / p
                    break
            else:
                p = manifest_path.parent / p
        if not p.is_file():
            raise VerificationError(f"part listed in the manifest is missing: {p}")
        out.append(p)
    return out


# ---- checksums -------------------------------------------------------------------------------


def canonical(column: str, declared: str) -> str:
    """A DuckDB expression that maps one column to the same typed value whichever side it comes
    from (SQLite text/real, or whatever Arrow type the worker chose)."""
    q = f'"{column}"'
    d = declared.upper()
    if d.startswith("INT"):
        return f"CAST({q} AS BIGINT)"
    if d.startswith(("DECIMAL", "NUMERIC")):
        return f"CAST({q} AS {d})"
    if d.startswith(("TIMESTAMP", "DATETIME")):
        return f"CAST({q} AS TIMESTAMP)"
    return f"CAST({q} AS VARCHAR)"


def checksum_sql(relation: str, columns: Sequence[tuple[str, str]]) -> str:
    row = ", ".join(canonical(c, d) for c, d in columns)
    return (
        f"SELECT count(*) AS n, sum(hash({row})::HUGEINT)::VARCHAR AS s, "
        f"bit_xor(hash({row}))::VARCHAR AS x FROM {relation}"
    )


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str

    @classmethod
    def of(
        cls, con: duckdb.DuckDBPyConnection, relation: str, columns: Sequence[tuple[str, str]]
    ) -> Checksum:
        n, s, x = con.execute(checksum_sql(relation, columns)).fetchone()  # type: ignore[misc]
        return cls(int(n), f"{s}/{x}")


def _sqlite_batches(
    db: Path, table: str, columns: Sequence[tuple[str, str]], batch: int = 100_000
) -> pa.RecordBatchReader:
    """The SQLite table as Arrow batches. DECIMAL columns are formatted by SQLite itself (NUMERIC
    affinity stores '123.45' as REAL or INTEGER), so that no Python float repr leaks in."""
    fields = []
    exprs = []
    for c, d in columns:
        du = d.upper()
        if du.startswith("INT"):
            fields.append(pa.field(c, pa.int64()))
            exprs.append(f'"{c}"')
        elif du.startswith(("DECIMAL", "NUMERIC")):
            scale = int(du.split(",")[1].rstrip(")")) if "," in du else 0
            fields.append(pa.field(c, pa.string()))
            exprs.append(
                f'CASE WHEN "{c}" IS NULL THEN NULL ELSE printf(\'%.{scale}f\', "{c}") END'
            )
        else:
            fields.append(pa.field(c, pa.string()))
            exprs.append(f'"{c}"')
    schema = pa.schema(fields)

    def gen() -> Iterator[pa.RecordBatch]:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            cur = con.execute(f"SELECT {', '.join(exprs)} FROM {table}")
            while rows := cur.fetchmany(batch):
                cols = list(zip(*rows, strict=True))
                yield pa.record_batch(
                    [pa.array(col, type=f.type) for col, f in zip(cols, fields, strict=True)],
                    schema=schema,
                )
        finally:
            con.close()

    return pa.RecordBatchReader.from_batches(schema, gen())


def verify(
    summary: tracker_pb2.RunSummary,
    destination: str,
    db: Path,
    table: str = "orders",
    columns: Sequence[tuple[str, str]] = demodata.COLUMNS,
) -> str:
    """Check the committed result against the source; returns the `verified: ...` line."""
    mpath = manifest_file(summary, destination)
    if not mpath.is_file():
        raise VerificationError(f"manifest not found: {mpath}")
    manifest = json.loads(mpath.read_text())
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as scon:
        source_count = int(scon.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    if int(manifest.get("row_count", -1)) != source_count:
        raise VerificationError(
            f"manifest row_count {manifest.get('row_count')} != SQLite COUNT(*) {source_count}"
        )
    parts = part_paths(manifest, mpath, destination)
    if not parts:
        raise VerificationError("the manifest lists no parts")

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
        fmt = str(manifest.get("format", "parquet"))
        reader = "read_parquet" if fmt == "parquet" else "read_csv_auto"
        ours = Checksum.of(con, f"{reader}({files})", columns)
        # DuckDB's sqlite extension would need a download: read SQLite in Python, normalise
        # the types the same way in DuckDB
        con.register("sqlite_source", _sqlite_batches(db, table, columns))
        theirs = Checksum.of(con, "sqlite_source", columns)
    finally:
        con.close()
    if ours.rows != source_count or theirs.rows != source_count:
        raise VerificationError(
            f"row counts differ: parquet {ours.rows}, sqlite {theirs.rows}, COUNT(*) {source_count}"
        )
    if ours.digest != theirs.digest:
        raise VerificationError(
            f"checksum mismatch over {len(columns)} columns: parquet {ours.digest} "
            f"!= sqlite {theirs.digest}"
        )
    return (
        f"verified: {source_count:,} rows in {len(parts)} parts; manifest row_count == "
        f"SQLite COUNT(*); checksum over all {len(columns)} columns matches ({ours.digest})"
    )


# ---- the demo --------------------------------------------------------------------------------


def _fresh_state_dir(state_dir: Path) -> None:
    """The demo's stack is throwaway: stop a leftover one, start from an empty store."""
    if stackmod.read_state(state_dir) is not None:
        stackmod.down(state_dir)
    if state_dir.exists():
        shutil.rmtree(state_dir)


def run_demo(console: Console, err: Console) -> int:
    t0 = time.monotonic()
    err.print(f"source: {DB.relative_to(ROOT)}", markup=False)
    tg = time.monotonic()
    _, created = demodata.ensure_demo_db(DB)
    err.print(
        f"  {'generated' if created else 'cached'} ({time.monotonic() - tg:.1f}s)", markup=False
    )
    spec = load_config(str(CONFIG), "orders")

    _fresh_state_dir(STATE_DIR)
    err.print(
        "starting the stack (nats-server, planner, committer, tracker, 2 workers)", markup=False
    )
    ts = time.monotonic()
    stack = stackmod.start_stack(STATE_DIR, workers=2)
    try:
        err.print(
            f"  ready in {time.monotonic() - ts:.1f}s: control {stack.state.control_addr}, "
            f"tracker {stack.state.tracker_addr}",
            markup=False,
        )
        with connect(stack_endpoints(stack)) as client:
            resp = client.submit(spec, requested_by="demo")
            err.print(f"run {resp.run_id}", markup=False)
            summary = follow(client, resp.run_id, min_seq=resp.stream_seq, console=err)
        render.print_card(summary, console)
        if summary.status != events_pb2.RUN_STATUS_SUCCEEDED:
            err.print(
                f"demo failed: run {render.status_name(summary.status)} "
                f"(logs: {STATE_DIR / 'logs'})",
                markup=False,
            )
            return 2
        mpath = manifest_file(summary, spec.destination)
        console.print(f"manifest: {mpath}", markup=False)
        tv = time.monotonic()
        try:
            line = verify(summary, spec.destination, DB)
        except VerificationError as exc:
            err.print(f"NOT verified: {exc}", markup=False)
            return 1
        console.print(line + f" [{time.monotonic() - tv:.1f}s]", markup=False)
    finally:
        err.print("stopping the stack", markup=False)
        stack.stop()
    console.print(f"demo finished in {time.monotonic() - t0:.1f}s", markup=False)
    return 0


def main() -> int:
    console = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return run_demo(console, err)
    except stackmod.StackError as exc:
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, SluicewayError):
            exc = grpc_failure(exc)
        if isinstance(exc, Failure):
            print(f"demo failed: {exc}", file=sys.stderr)
            return exc.code
        raise


if __name__ == "__main__":
    sys.exit(main())
