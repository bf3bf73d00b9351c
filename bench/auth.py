"""What authentication and TLS cost an API call: the real Tracker servicer and interceptor on
loopback, read by one client, in three setups measured in alternating rounds: plaintext with
authentication off (the reference), bearer token over TLS, and mutual TLS. Part of `make
bench`; alone: `python -m bench.auth` (JSON on stdout).

The data path (source -> worker -> files) never crosses these APIs, so an export's wall time
cannot show this cost above its noise. What it changes is the price of each call that clients
and dashboards make: per-call latency and calls per second, here as ratios to the reference."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import trustme
import yaml

from sluiceway.client.options import bearer_interceptors
from sluiceway.common.apiserver import ApiSecurity, ApiServer
from sluiceway.common.authn import Audit, Authenticator
from sluiceway.common.domain import events as ev
from sluiceway.common.principals import PrincipalsFile, new_token, token_digest
from sluiceway.common.tlsfiles import ServerTlsFiles, client_credentials
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.tracker.adapters.servicer import TrackerServicer
from sluiceway.tracker.app import Db
from sluiceway.v1 import tracker_pb2, tracker_pb2_grpc
from tests.support.certs import client_cert, server_cert, write_ca, write_leaf
from tests.unit.test_tracker_store import raw, run_history

RUNS = 200
CALLS = 1_000  # per round and setup
ROUNDS = 3
SETUPS = ("plaintext, auth off", "TLS + bearer token", "mutual TLS")


class _Progress:
    applied_seq = 1 << 62

    def progress_marker(self) -> asyncio.Event:
        return asyncio.Event()

    def run_marker(self, run_id: str) -> asyncio.Event:
        return asyncio.Event()


def _owned(history: list[ev.RunEvent]) -> list[ev.RunEvent]:
    out = []
    for e in history:
        if isinstance(e.body, ev.RunRequested):
            e = dataclasses.replace(
                e, body=dataclasses.replace(e.body, owner="alice", team="payments")
            )
        out.append(e)
    return out


def _store(path: Path) -> TrackerStore:
    store = TrackerStore(path)
    seq = 1
    for i in range(RUNS):
        batch = raw(_owned(run_history(f"run-{i:05d}")), first_seq=seq)
        store.apply(batch)
        seq += len(batch)
    return store


async def _calls(stub: Any, run_ids: list[str]) -> list[float]:
    latencies = []
    for i in range(CALLS):
        began = time.perf_counter()
        if i % 4 == 3:
            await stub.ListRuns(tracker_pb2.ListRunsRequest(page_size=20), timeout=10)
        else:
            await stub.GetRun(
                tracker_pb2.GetRunRequest(run_id=run_ids[i % len(run_ids)]), timeout=10
            )
        latencies.append(time.perf_counter() - began)
    return latencies


async def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp_dir:
        tmp = Path(tmp_dir)
        ca = trustme.CA()
        ca_file = write_ca(ca, tmp / "ca.crt")
        served = write_leaf(server_cert(ca), tmp / "tls")
        alice = write_leaf(client_cert(ca, "alice", "payments"), tmp / "alice", "client")
        token = new_token()
        principals = tmp / "principals.yaml"
        principals.write_text(
            yaml.safe_dump(
                {
                    "principals": [
                        {
                            "name": "alice",
                            "role": "operator",
                            "teams": ["payments"],
                            "tokens": [{"sha256": token_digest(token)}],
                            "subjects": ["CN=alice,OU=clients,O=payments"],
                        }
                    ]
                }
            )
        )
        store = await asyncio.to_thread(_store, tmp / "t.duckdb")
        db = Db(store)
        run_ids = [f"run-{i:05d}" for i in range(RUNS)]
        authn = Authenticator(PrincipalsFile(principals))
        securities = {
            SETUPS[0]: ApiSecurity(Authenticator(None), Audit(), None),
            SETUPS[1]: ApiSecurity(
                authn, Audit(), ServerTlsFiles(str(served.cert_file), str(served.key_file))
            ),
            SETUPS[2]: ApiSecurity(
                authn,
                Audit(),
                ServerTlsFiles(str(served.cert_file), str(served.key_file), str(ca_file)),
            ),
        }
        readings: dict[str, list[list[float]]] = {s: [] for s in SETUPS}
        for _ in range(ROUNDS):
            for name, security in securities.items():
                api = ApiServer(security, ("sluiceway.v1.Tracker",))
                tracker_pb2_grpc.add_TrackerServicer_to_server(  # type: ignore[no-untyped-call]
                    TrackerServicer(db, _Progress(), audit=security.audit), api.server
                )
                addr = await api.start("127.0.0.1:0", "bench")
                if name == SETUPS[0]:
                    channel = grpc.aio.insecure_channel(addr)
                elif name == SETUPS[1]:
                    creds = client_credentials(str(ca_file))
                    channel = grpc.aio.secure_channel(
                        addr, creds, interceptors=bearer_interceptors(token)
                    )
                else:
                    creds = client_credentials(
                        str(ca_file), str(alice.cert_file), str(alice.key_file)
                    )
                    channel = grpc.aio.secure_channel(addr, creds)
                stub = tracker_pb2_grpc.TrackerStub(channel)
                await _calls(stub, run_ids[:20])  # warm-up: the connection, the handshake
                readings[name].append(await _calls(stub, run_ids))
                await channel.close()
                await api.stop(0)
        await db.close()

    def summary(rounds: list[list[float]]) -> dict[str, Any]:
        best = min(rounds, key=sum)
        cuts = statistics.quantiles(best, n=100)
        return {
            "calls_per_s_best": round(CALLS / sum(best), 1),
            "calls_per_s_all": [round(CALLS / sum(r), 1) for r in rounds],
            "p50_ms": round(cuts[49] * 1000, 3),
            "p99_ms": round(cuts[98] * 1000, 3),
        }

    out: dict[str, Any] = {"runs": RUNS, "calls_per_round": CALLS, "rounds": ROUNDS}
    out["setups"] = {name: summary(r) for name, r in readings.items()}
    ref = out["setups"][SETUPS[0]]
    for name in SETUPS[1:]:
        s = out["setups"][name]
        s["throughput_vs_reference"] = round(s["calls_per_s_best"] / ref["calls_per_s_best"], 3)
        s["p50_vs_reference"] = round(s["p50_ms"] / ref["p50_ms"], 3)
    return out


def main() -> int:
    print(json.dumps(asyncio.run(measure()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
