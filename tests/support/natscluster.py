"""A three-node JetStream cluster of real nats-server processes on loopback ports: client and
monitoring ports bound by each server itself, route ports chosen again when a start loses one."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sluiceway.common.localnats import LocalNats, PortInUse, free_port

START_ATTEMPTS = 5


class NatsCluster:
    """`size` nodes, each with its own client, route and monitoring port and its own store.
    A node that is killed comes back on the same ports and store with `restart`."""

    def __init__(self, root: Path, *, size: int = 3, name: str = "sluiceway-test") -> None:
        self.root = root
        self.nodes = [
            LocalNats(
                store_dir=root / f"n{i}" / "store",
                name=f"n{i}",
                cluster_name=name,
                http_port=0,
                log_file=root / f"n{i}.log",
            )
            for i in range(1, size + 1)
        ]
        self._link()

    def _link(self) -> None:
        for node in self.nodes:
            node.routes = tuple(o.route_url for o in self.nodes if o is not node)

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated: what SLUICEWAY_NATS_URL takes."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> LocalNats:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        """Start every node and wait (bounded) until all agree on one meta leader. On failure,
        whatever was started is stopped."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                for node in self.nodes:
                    node.start(timeout_s)
                self.wait_meta_leader(timeout_s)
                return self
            except PortInUse:
                # another process took a route port between its choice and the bind: every
                # node is told its peers' route ports at start, so choose them all again
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
                for node in self.nodes:
                    shutil.rmtree(node.store_dir, ignore_errors=True)  # a fresh cluster again
                    node.port, node.cluster_port = 0, free_port(node.host)
                    if node.http_port is not None:
                        node.http_port = 0
                self._link()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def kill(self, name: str) -> LocalNats:
        """SIGKILL one node (its process group)."""
        node = self.node(name)
        node.kill()
        return node

    def restart(self, name: str, timeout_s: float = 30.0) -> LocalNats:
        """Start a killed node again on its ports and store."""
        return self.node(name).start(timeout_s)

    def wait_meta_leader(self, timeout_s: float = 30.0) -> str:
        """The meta leader's name, once every running node names the same one and sees a
        cluster of every node."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            seen = set()
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                meta = (jsz(node) or {}).get("meta_cluster") or {}
                seen.add((meta.get("leader", ""), meta.get("cluster_size", 0)))
            last = seen
            if len(seen) == 1:
                leader, size = next(iter(seen))
                if leader and size == len(self.nodes):
                    return str(leader)
            time.sleep(0.1)
        raise TimeoutError(f"no meta leader agreed by every node in {timeout_s}s (last: {last})")


def jsz(node: LocalNats, **params: str) -> dict[str, Any] | None:
    """The node's /jsz monitoring document; None while it does not answer."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = f"{node.monitor_url}/jsz" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            doc = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def streams(node: LocalNats) -> dict[str, dict[str, Any]]:
    """stream name -> the node's /jsz?streams=true detail: `state` is the node's own replica
    ({messages, last_seq, ...}, what it holds, not what its leader says) and `cluster.leader`
    the leader as this node knows it. {} while the node does not answer."""
    doc = jsz(node, streams="true") or {}
    out: dict[str, dict[str, Any]] = {}
    for account in doc.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            out[str(stream.get("name"))] = dict(stream)
    return out


def stream_leader(nodes: list[LocalNats], stream: str) -> str:
    """The leader of `stream` once every one of `nodes` names the same one; '' until then."""
    leaders = set()
    for node in nodes:
        detail = streams(node).get(stream) or {}
        leaders.add(str((detail.get("cluster") or {}).get("leader") or ""))
    return leaders.pop() if len(leaders) == 1 else ""
