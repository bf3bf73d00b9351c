"""The harness of bench/pg_readers.py and bench/mysql_readers.py: each reader in a child
process of its own (its peak RSS is ru_maxrss of that child), on a throwaway server loaded
by the script unless `--url` names an existing database."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

Reader = Callable[[str], tuple[int, bool]]  # url -> (rows, streamed?)


def child(fn: Reader, url: str) -> None:
    t0 = time.perf_counter()
    rows, streams = fn(url)
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "streams": streams}))


def run_one(script: str, reader: str, url: str) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, script, "--child", reader, "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    result: dict[str, object] = {"reader": reader, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if os.waitstatus_to_exitcode(status) != 0:
        result["error"] = (err.strip().splitlines() or ["?"])[-1][:200]
        return result
    data = json.loads(out.strip().splitlines()[-1])
    result.update(data)
    if data["rows"] and data["seconds"]:
        result["rows_per_s"] = int(data["rows"] / data["seconds"])
    return result


def compare(
    script: str,
    readers: Sequence[str],
    lookup: Callable[[str], Reader],
    *,
    default_rows: int,
    start: Callable[[], Any],
    load: Callable[[Any, int], None],
) -> None:
    """The command line of a readers script: `--child` runs one reader (in the child);
    otherwise start a server (`start()`, stopped at the end), `load(server, rows)`, and print
    one JSON line per reader."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=default_rows)
    ap.add_argument("--url", default="")
    ap.add_argument("--child", default="")
    ap.add_argument("--readers", default=",".join(readers))
    args = ap.parse_args()
    if args.child:
        child(lookup(args.child), args.url)
        return
    server = None
    url = args.url
    if not url:
        server = start()
        url = server.url
        t0 = time.perf_counter()
        load(server, args.rows)
        print(f"loaded {args.rows} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    try:
        for reader in args.readers.split(","):
            print(json.dumps(run_one(script, reader, url)), flush=True)
    finally:
        if server is not None:
            server.stop()
