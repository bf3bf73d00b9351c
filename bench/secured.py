"""What authentication and TLS cost a whole export: the bench table exported by two stacks
started side by side, in alternating rounds:

- off: authentication off, plaintext gRPC, a nats-server without users;
- on: bearer tokens, TLS on both gRPC APIs, NATS over TLS with one user per service (as the
  Kubernetes manifests deploy it).

Part of `make bench` (the report's `export_auth`). Each setup's best wall time, every reading,
and the ratio off/on (1.0 = no cost; below 1 = the secured stack is slower)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import Endpoints, connect
from sluiceway.client import Client
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2
from tests.support.securenats import SecuredStack

NAMESPACE = "benchauth"
SETUPS = ("off", "on")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class _Setups:
    """Both stacks and how a client reaches each; stopped by close()."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.endpoints: dict[str, Endpoints] = {}
        self._plain: LocalNats | None = None
        self._off: stackmod.Stack | None = None
        self._on: SecuredStack | None = None

    def start(self) -> None:
        self._plain = LocalNats(store_dir=self.work / "off" / "nats").start()
        self._off = stackmod.start_stack(
            self.work / "off" / "state",
            workers=2,
            nats_url=self._plain.url,
            env={**os.environ, "SLUICEWAY_NAMESPACE": NAMESPACE, "SLUICEWAY_AUTH": "off"},
        )
        self.endpoints["off"] = Endpoints(
            self._off.state.control_addr, self._off.state.tracker_addr
        )
        self._on = SecuredStack(self.work / "on", NAMESPACE, os.environ, workers=2)
        self.endpoints["on"] = self._on.endpoints()

    def close(self) -> None:
        for stop in (self._on, self._off, self._plain):
            if stop is not None:
                stop.stop()


def measure(
    work: Path,
    spec: Any,
    runs: int,
    timed_export: Callable[[Client, Any], tuple[float, Any, str]],
) -> dict[str, Any]:
    """`runs` exports of `spec` per setup, alternating off, on, off, on, ..."""
    setups = _Setups(work)
    walls: dict[str, list[float]] = {s: [] for s in SETUPS}
    rows: dict[str, int] = {}
    try:
        _log("starting two more stacks: auth and TLS off, and on (NATS TLS + users)")
        setups.start()
        clients = {s: connect(setups.endpoints[s]) for s in SETUPS}
        try:
            for _ in range(runs):
                for setup in SETUPS:
                    wall, summary, run_id = timed_export(clients[setup], spec)
                    status = events_pb2.RunStatus.Name(summary.status)
                    _log(f"auth {setup}: run {run_id} {status} in {wall:.2f}s")
                    if summary.status != events_pb2.RUN_STATUS_SUCCEEDED:
                        raise RuntimeError(f"auth {setup}: {status}: {summary.error_message}")
                    walls[setup].append(wall)
                    rows[setup] = summary.total_rows
        finally:
            for client in clients.values():
                client.close()
    finally:
        setups.close()
    best = {s: min(walls[s]) for s in SETUPS}
    return {
        "setups": {
            "off": "authentication off, plaintext gRPC, NATS without users",
            "on": "bearer token, TLS on both APIs, NATS over TLS with one user per service",
        },
        "wall_s": {s: round(best[s], 3) for s in SETUPS},
        "wall_runs_s": {s: [round(w, 3) for w in walls[s]] for s in SETUPS},
        "rows": rows,
        "ratio_off_over_on": round(best["off"] / best["on"], 3),
    }
