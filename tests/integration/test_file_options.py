"""File options through the real stack (CLI `up`, planner, workers, committer) from SQLite:
parts split by max_file_size and listed in the manifest, every codec readable by DuckDB, CSV with
gzip, and the _exported_at column with one value per run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

ROWS = 40_000
EXPORTS = {
    # name: extra config lines
    "split": "max_file_size: 64KiB\nmode: chunked\nchunk_column: id\nchunk_size: 20000",
    "zstd": "compression: zstd\ncompression_level: 19",
    "snappy": "compression: snappy",
    "gzip": "compression: gzip\ncompression_level: 9",
    "lz4": "compression: lz4",
    "none": "compression: none",
    "compact": "compression_profile: compact",
    "csvgz": "format: csv\ncompression: gzip",
    "stamped": "add_exported_at: true\nmax_file_size: 64KiB\nrow_group_mb: 1",
}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "sluiceway.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fileopts")
    con = sqlite3.connect(root / "shop.db")
    con.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, city TEXT, "
        "amount DECIMAL(12,2), placed TIMESTAMP)"
    )
    cities = ["Zürich", "東京", "Łódź", "New York", "Lisboa"]
    con.executemany(
        "INSERT INTO orders VALUES (?,?,?,?,?)",
        [
            (
                i,
                f"customer {i * 7919 % 100_003} Ngọc",
                cities[i % 5],
                f"{i * 7919 % 1_000_000 / 100:.2f}",
                f"2024-05-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00",
            )
            for i in range(1, ROWS + 1)
        ],
    )
    con.commit()
    con.close()
    lines = ["version: 1", "sources:", "  shop: {engine: sqlite, path: shop.db}", "exports:"]
    for name, extra in EXPORTS.items():
        lines += [f"  - name: {name}", "    source: shop", "    table: orders"]
        lines += ["    destination: out"] + ["    " + x for x in extra.splitlines()]
    (root / "exports.yaml").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[list[str]]:
    sd = ["--state-dir", str(workdir / "state")]
    up = cli("up", "--detach", "--workers", "2", *sd)
    assert up.returncode == 0, up.stderr
    pids = [
        p["pid"] for p in json.loads((workdir / "state" / "state.json").read_text())["processes"]
    ]
    try:
        yield sd
    finally:
        down = cli("down", *sd, timeout=60)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.1)
    assert down.returncode == 0, down.stderr


def run(workdir: Path, sd: list[str], export: str) -> tuple[dict[str, Any], Path]:
    """Run one export to its end; the committed manifest and the run directory."""
    res = cli(
        "run", "-c", str(workdir / "exports.yaml"), "--export", export, "--wait", "--json", *sd
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "RUN_STATUS_SUCCEEDED", summary
    run_dir = workdir / "out" / export / "runs" / summary["run_id"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["row_count"] == ROWS
    return manifest, run_dir


def test_max_file_size_splits_a_chunk_into_parts_listed_in_the_manifest(
    workdir: Path, stack: list[str]
) -> None:
    manifest, run_dir = run(workdir, stack, "split")
    parts = manifest["parts"]
    by_chunk: dict[int, list[dict[str, Any]]] = {}
    for p in parts:
        by_chunk.setdefault(p["chunk_index"], []).append(p)
    assert sorted(by_chunk) == [0, 1]
    assert all(len(ps) >= 3 for ps in by_chunk.values()), parts
    assert sorted(p["path"] for p in parts) == sorted(
        x.name for x in run_dir.iterdir() if x.name.startswith("part-")
    )
    # a part closes at the first row group past the target; row groups are at most 1/8 of it,
    # plus the Parquet footer (docs/config-files.md)
    target = 64 * 1024
    for ps in by_chunk.values():
        ps.sort(key=lambda p: p["part_id"])
        for p in ps[:-1]:
            assert target <= p["size_bytes"] <= target * 1.125 + 16 * 1024, p
    (count, distinct) = duckdb.sql(
        f"select count(*), count(distinct id) from read_parquet('{run_dir}/part-*.parquet')"
    ).fetchone()  # type: ignore[misc]
    assert count == distinct == ROWS


@pytest.mark.parametrize(
    ("export", "codec"),
    [
        ("zstd", "ZSTD"),
        ("snappy", "SNAPPY"),
        ("gzip", "GZIP"),
        ("lz4", "LZ4"),
        ("none", "UNCOMPRESSED"),
        ("compact", "ZSTD"),
    ],
)
def test_each_codec_is_written_and_read_back_by_duckdb(
    workdir: Path, stack: list[str], export: str, codec: str
) -> None:
    manifest, run_dir = run(workdir, stack, export)
    (part,) = manifest["parts"]
    path = run_dir / part["path"]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == codec
    got = duckdb.sql(
        f"select count(*), sum(id), min(name), epoch_us(max(placed)) from read_parquet('{path}')"
    ).fetchone()
    assert got is not None
    assert got[:2] == (ROWS, ROWS * (ROWS + 1) // 2)
    assert got[2].startswith("customer ")


def test_csv_with_gzip_is_a_gzip_stream_duckdb_reads(workdir: Path, stack: list[str]) -> None:
    manifest, run_dir = run(workdir, stack, "csvgz")
    assert manifest["format"] == "csv" and manifest["compression"] == "gzip"
    (part,) = manifest["parts"]
    path = run_dir / part["path"]
    assert path.read_bytes()[:2] == b"\x1f\x8b" and path.name.endswith(".csv.gz")
    # named .csv.gz: DuckDB recognises the codec by itself
    got = duckdb.sql(f"select count(*), sum(id) from read_csv('{path}')").fetchone()
    assert got == (ROWS, ROWS * (ROWS + 1) // 2)


def test_exported_at_is_one_value_the_run_time_and_in_the_manifest_schema(
    workdir: Path, stack: list[str]
) -> None:
    manifest, run_dir = run(workdir, stack, "stamped")
    assert manifest["schema"][-1] == {
        "name": "_exported_at",
        "type": "timestamp[us, tz=UTC]",
        "nullable": False,
    }
    assert len(manifest["parts"]) > 1
    rows = duckdb.sql(
        f"select distinct epoch_us(_exported_at) from read_parquet('{run_dir}/part-*.parquet')"
    ).fetchall()
    assert len(rows) == 1
    (stamp_us,) = rows[0]
    expected = datetime.strptime(manifest["run_id"][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert stamp_us == int(expected.timestamp()) * 1_000_000
    started = datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
    assert 0 <= (started - expected).total_seconds() < 1
    schema = pq.read_schema(run_dir / manifest["parts"][0]["path"])
    assert str(schema.field("_exported_at").type) == "timestamp[us, tz=UTC]"
