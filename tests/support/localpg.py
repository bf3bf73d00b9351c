"""A throwaway PostgreSQL cluster on a loopback port (chosen again if another process takes it
before the bind), run by an unprivileged user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sluiceway.common.localnats import PortInUse, free_port

START_ATTEMPTS = 5

USER = "sluice"
PASSWORD = "s3cret-Pw-9f2c"  # the tests look for this string in events, logs and manifests


def _pg_bindir() -> Path:
    for probe in ("pg_config",):
        exe = shutil.which(probe)
        if exe:
            out = subprocess.run([exe, "--bindir"], capture_output=True, text=True)
            cand = Path(out.stdout.strip())
            if (cand / "initdb").exists():
                return cand
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if dirs:
        return Path(dirs[-1])
    raise FileNotFoundError("no PostgreSQL server binaries (initdb)")


def ensure_postgres_installed() -> Path:
    """The server binaries, installing Debian's postgresql package when missing (as root)."""
    try:
        return _pg_bindir()
    except FileNotFoundError:
        if os.geteuid() != 0:
            raise
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    return _pg_bindir()


@dataclass
class LocalPostgres:
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluiceway-pg-")))
    port: int = 0
    database: str = "source"
    bindir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        # initdb refuses to run as root: run the cluster as 'nobody' when we are root
        if os.geteuid() == 0:
            args = ["runuser", "-u", "nobody", "--", *args]
        return subprocess.run(args, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def start(self, *, settings: dict[str, str] | None = None) -> LocalPostgres:
        self.bindir = ensure_postgres_installed()
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "nobody", "nogroup")
        os.chmod(self.base, 0o755)
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "nobody", "nogroup")
        self._as_owner(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        pwfile.unlink()
        opts = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.base),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "256MB",
            "max_connections": "100",
            "timezone": "UTC",
            **(settings or {}),
        }
        chosen = self.port
        for attempt in range(1, START_ATTEMPTS + 1):
            # PostgreSQL cannot bind port 0: choose a free port, and choose again when another
            # process takes it between the choice and the bind
            self.port = chosen or free_port()
            try:
                self._pg_ctl_start({**opts, "port": str(self.port)})
                break
            except PortInUse:
                if chosen or attempt == START_ATTEMPTS:
                    raise
        self.psql_admin(f"CREATE DATABASE {self.database}", db="postgres")
        return self

    def _pg_ctl_start(self, opts: dict[str, str]) -> None:
        log = self.base / "log"
        offset = log.stat().st_size if log.exists() else 0
        o = " ".join(f"-c {k}={v}" for k, v in opts.items())
        try:
            self._as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log),
                    "-o",
                    o,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as e:
            with open(log, "rb") as f:
                f.seek(offset)
                said = f.read().decode("utf-8", "replace")
            if "Address already in use" in said:
                raise PortInUse(f"PostgreSQL could not bind 127.0.0.1:{opts['port']}") from e
            raise RuntimeError(f"pg_ctl start failed: {said.strip()[-2000:]}") from e

    def psql_admin(self, sql: str, db: str | None = None) -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        out = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                db or self.database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def stop(self) -> None:
        if self.bindir is None or not self.data_dir.exists():
            return
        try:
            self._as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ]
            )
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met in {timeout_s}s")
