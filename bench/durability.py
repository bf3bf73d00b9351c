"""`make bench-durability`: what fsync costs the part writer, the same parts with and without it.

The same Arrow data (an orders-like table, 2M rows by default) is written through PartWriter
into Parquet/zstd parts of about `--part-mb` MB, first as the worker does it (each part's file
fsynced, renamed, its directory fsynced) and then with os.fsync replaced by a no-op for the
duration of that round only. Rounds alternate, durable first; the best time of each kind is
kept. Between rounds (untimed) the files are deleted and os.sync() flushes what a no-fsync round
left dirty, so that no round pays for another's writeback. Prints one JSON report on stdout:

  rows, parts, bytes, seconds_durable, seconds_no_fsync,
  ratio             = seconds_durable / seconds_no_fsync (best of each)
  fsync_ms_per_part = (seconds_durable - seconds_no_fsync) / parts, in ms
  fsync_ms_per_part_in_call: time spent inside os.fsync (file + directory) per part, best round

Measure on the filesystem the worker writes to (--dir; default .sluiceway/bench-durability):
on tmpfs an fsync costs nothing and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sluiceway.common.parts import PartWriter

ROOT = Path(__file__).resolve().parents[1]
BATCH_ROWS = 65_536  # about what the PostgreSQL reader hands over per batch
ROW_GROUP_ROWS = 131_072


def log(msg: str) -> None:
    print(f"[bench-durability] {msg}", file=sys.stderr, flush=True)


def orders(rows: int) -> pa.Table:
    """A deterministic orders-like table: keys, amounts, timestamps, a few low-cardinality
    labels and some free text (email, address, a JSON attribute blob)."""

    def uniform(seed: int) -> pa.Array:
        return pc.random(rows, initializer=seed)

    def ints(seed: int, below: int) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(uniform(seed), below)), pa.int64())

    def pick(seed: int, values: list[str]) -> pa.Array:
        return pc.take(pa.array(values), ints(seed, len(values)))

    def text(values: pa.Array) -> pa.Array:
        return pc.cast(values, pa.string())

    def join(*parts: pa.Array | str) -> pa.Array:
        return pc.binary_join_element_wise(*parts, "")

    customer = ints(1, 200_000)
    cents = ints(3, 10_000_000)
    year_us = 365 * 86_400 * 1_000_000
    return pa.table(
        {
            "id": pa.array(range(1, rows + 1), pa.int64()),
            "customer_id": customer,
            "status": pick(4, ["placed", "paid", "shipped", "delivered", "returned"]),
            "quantity": pc.cast(pc.add(ints(2, 20), 1), pa.int32()),
            "price": pc.cast(
                pc.divide(pc.cast(cents, pa.float64()), 100.0), pa.decimal128(12, 2), safe=False
            ),
            "currency": pick(5, ["EUR", "USD", "GBP"]),
            "created_at": pc.cast(
                pc.add(ints(6, year_us), 1_700_000_000_000_000), pa.timestamp("us", tz="UTC")
            ),
            "email": join("customer", text(customer), "@example.com"),
            "ship_address": join(
                text(ints(7, 9_999)),
                " ",
                pick(8, ["Main St", "Oak Ave", "Elm Rd", "Harbour Way", "Station Rd"]),
                ", ",
                text(ints(9, 99_999)),
                " ",
                pick(10, ["Springfield", "Rivertown", "Lakeside", "Hillview"]),
            ),
            "attrs": join(
                '{"channel": "',
                pick(11, ["web", "app", "store"]),
                '", "coupon": ',
                text(ints(12, 1_000)),
                ', "ref": "',
                text(ints(13, 10**15)),
                '"}',
            ),
        }
    )


@contextlib.contextmanager
def fsync_replaced(replacement: Callable[[Any], None]) -> Iterator[None]:
    """os.fsync is `replacement` inside the block (parts.py looks it up at call time)."""
    real = os.fsync
    os.fsync = replacement  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync = real


def write_round(
    table: pa.Table, run_dir: Path, part_bytes: int, *, durable: bool
) -> tuple[float, float, int, int]:
    """(seconds, seconds inside fsync, parts, bytes) of writing `table` once."""
    real = os.fsync
    in_fsync = 0.0

    def timed(fd: Any) -> None:
        nonlocal in_fsync
        began = time.perf_counter()
        real(fd)
        in_fsync += time.perf_counter() - began

    def skipped(fd: Any) -> None:
        return None

    run_dir.mkdir(parents=True, exist_ok=True)
    batches = table.to_batches(max_chunksize=BATCH_ROWS)
    with fsync_replaced(timed if durable else skipped):
        began = time.perf_counter()
        writer = PartWriter(
            run_dir,
            0,
            1,
            "parquet",
            "zstd",
            0,
            ROW_GROUP_ROWS,
            table.schema,
            max_file_bytes=part_bytes,
        )
        for batch in batches:
            writer.write(batch)
        parts = writer.close()
        seconds = time.perf_counter() - began
    assert sum(p.rows for p in parts) == table.num_rows
    return seconds, in_fsync, len(parts), sum(p.bytes for p in parts)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (longest mount point of /proc/mounts)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", 2_000_000)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 4)))
    ap.add_argument("--part-mb", type=int, default=32, help="a part is closed past this size")
    ap.add_argument("--dir", type=Path, default=ROOT / ".sluiceway" / "bench-durability")
    args = ap.parse_args(argv)

    base: Path = args.dir
    fs = filesystem_of(base)
    if fs == "tmpfs":
        log(f"{base} is on tmpfs: fsync costs nothing there, the ratio will be ~1")
    log(f"generating {args.rows:,} rows")
    table = orders(args.rows).combine_chunks()
    samples: dict[str, list[float]] = {"durable": [], "no_fsync": []}
    in_call: list[float] = []
    parts = size = 0
    shape: tuple[int, int] | None = None
    try:
        # untimed warm-up: codec and allocator set up, the first part's directory created
        write_round(table, base / "warm-up", args.part_mb << 20, durable=False)
        shutil.rmtree(base / "warm-up")
        os.sync()
        for n in range(args.rounds):
            for kind in ("durable", "no_fsync"):
                run_dir = base / f"round-{n}-{kind}"
                seconds, fsync_s, parts, size = write_round(
                    table, run_dir, args.part_mb << 20, durable=kind == "durable"
                )
                assert (parts, size) == (shape or (parts, size)), "rounds wrote different parts"
                shape = (parts, size)
                samples[kind].append(seconds)
                if kind == "durable":
                    in_call.append(fsync_s)
                log(f"round {n + 1}/{args.rounds} {kind}: {seconds:.3f} s, {parts} parts")
                shutil.rmtree(run_dir)
                os.sync()  # untimed: nothing left dirty for the next round to flush
    finally:
        shutil.rmtree(base, ignore_errors=True)

    durable, loose = min(samples["durable"]), min(samples["no_fsync"])
    best = samples["durable"].index(durable)
    report = {
        "rows": args.rows,
        "parts": parts,
        "bytes": size,
        "seconds_durable": round(durable, 4),
        "seconds_no_fsync": round(loose, 4),
        "ratio": round(durable / loose, 3),
        "fsync_ms_per_part": round((durable - loose) / parts * 1000, 2),
        "fsync_ms_per_part_in_call": round(in_call[best] / parts * 1000, 2),
        "rounds": args.rounds,
        "format": "parquet/zstd",
        "filesystem": fs,
        "samples": {k: [round(s, 4) for s in v] for k, v in samples.items()},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
