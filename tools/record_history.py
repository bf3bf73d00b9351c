"""Record one run's history from a live stream as JSON lines, for tests/data/histories/.

    python tools/record_history.py RUN_ID -o tests/data/histories/NAME.jsonl [--expected]

Each line is one `sluiceway.v1.RunEvent` in protobuf JSON (field names as in the .proto), in
stream order. NATS comes from --nats-url, else SLUICEWAY_NATS_URL, else the state.json of a
stack started by `sluiceway up` (--state-dir); the namespace from --namespace, else
SLUICEWAY_NAMESPACE, else "sluiceway". --expected also writes NAME.expected.json, the outcome
that today's fold gives: review it by hand before committing, it is what the test will hold
every later version to (tests/unit/test_recorded_histories.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from sluiceway.common import bus as busmod
from sluiceway.common import codec
from sluiceway.common.domain.run import fold
from sluiceway.v1 import events_pb2


def to_line(data: bytes) -> str:
    msg = events_pb2.RunEvent()
    msg.ParseFromString(data)
    return str(
        json_format.MessageToJson(
            msg, preserving_proto_field_name=True, indent=None, sort_keys=True
        )
    )


def outcome(lines: list[str]) -> dict[str, Any]:
    """The fold's verdict on a recorded history, in the sidecar's shape."""
    events = [codec.event_from_pb(json_format.Parse(line, events_pb2.RunEvent())) for line in lines]
    state = fold(events)
    return {
        "run_id": state.run_id,
        "status": state.status.value,
        # rows of the winning attempts; committed files: those a committed manifest lists
        "rows": state.total_rows,
        "committed_files": [f.file_name for f in state.committed_files()]
        if state.manifest is not None
        else [],
        "chunks": {str(i): c.status.value for i, c in sorted(state.chunks.items())},
        "retries": state.retries,
        "anomaly_kinds": [a.kind for a in state.anomalies],
    }


def _nats_url(args: argparse.Namespace) -> str:
    if args.nats_url:
        return str(args.nats_url)
    if os.environ.get("SLUICEWAY_NATS_URL"):
        return os.environ["SLUICEWAY_NATS_URL"]
    state = Path(args.state_dir) / "state.json"
    if state.exists():
        url = json.loads(state.read_text()).get("nats_url", "")
        if url:
            return str(url)
    raise SystemExit(
        "record_history: no NATS URL (use --nats-url, SLUICEWAY_NATS_URL or --state-dir)"
    )


async def record(url: str, namespace: str, run_id: str) -> list[str]:
    try:  # bounded: nats.connect() with unlimited reconnects never gives up on its own
        nc = await asyncio.wait_for(
            busmod.connect(url, name="record-history", connect_timeout_s=10), timeout=10
        )
    except (ConnectionError, TimeoutError):
        raise SystemExit(f"record_history: cannot reach NATS at {url}") from None
    try:
        bus = busmod.Bus(nc, busmod.Names(namespace))
        lines = []
        async for seq, data in bus.iter_raw(bus.names.run_history(run_id)):
            try:
                lines.append(to_line(data))
            except DecodeError:
                print(f"record_history: seq {seq} is not a RunEvent, left out", file=sys.stderr)
        return lines
    finally:
        await nc.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_id")
    p.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    p.add_argument("--namespace", default=os.environ.get("SLUICEWAY_NAMESPACE", "sluiceway"))
    p.add_argument("--nats-url", default="")
    p.add_argument("--state-dir", default=os.environ.get("SLUICEWAY_STATE_DIR", ".sluiceway"))
    p.add_argument(
        "--expected", action="store_true", help="also write <output>.expected.json (review it)"
    )
    args = p.parse_args(argv)
    lines = asyncio.run(record(_nats_url(args), args.namespace, args.run_id))
    if not lines:
        print(f"record_history: no events for run {args.run_id!r}", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{out}: {len(lines)} events", file=sys.stderr)
    if args.expected:
        sidecar = out.with_suffix(".expected.json")
        sidecar.write_text(json.dumps(outcome(lines), indent=2) + "\n", encoding="utf-8")
        print(f"{sidecar}: the current fold's outcome; review it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
