"""A throwaway MariaDB server on a loopback port (chosen again if another process takes it
before the bind), its data directory owned by an unprivileged user: Debian's mariadb-server
binaries, installed from Debian's packages when missing (as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sluiceway.common.localnats import PortInUse, free_port

START_ATTEMPTS = 5
START_TIMEOUT_S = 60.0

USER = "sluice"
PASSWORD = "s3cret-My-4be1"  # the tests look for this string in events, logs and manifests
OWNER = "nobody"


def _server_binaries() -> tuple[str, str]:
    """(mariadbd, mariadb-install-db)."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    install = shutil.which("mariadb-install-db") or shutil.which(
        "mariadb-install-db", path="/usr/bin:/usr/sbin"
    )
    if not (server and install):
        raise FileNotFoundError("no MariaDB server binaries (mariadbd, mariadb-install-db)")
    return server, install


def ensure_mariadb_installed() -> tuple[str, str]:
    """The server binaries, installing Debian's mariadb-server package when missing (as root)."""
    try:
        return _server_binaries()
    except FileNotFoundError:
        if os.geteuid() != 0:
            raise
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "mariadb-server", "mariadb-client"],
        check=True,
        env=env,
    )
    return _server_binaries()


@dataclass
class LocalMariaDB:
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluiceway-my-")))
    port: int = 0
    database: str = "source"
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def url(self) -> str:
        return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{self.database}"

    def start(self, *, settings: dict[str, str] | None = None) -> LocalMariaDB:
        server, install = ensure_mariadb_installed()
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base, OWNER, "nogroup")
        args = [install, "--no-defaults", f"--datadir={self.data_dir}", "--skip-test-db"]
        args += ["--auth-root-authentication-method=socket"]
        if os.geteuid() == 0:
            args.append(f"--user={OWNER}")
        subprocess.run(args, check=True, capture_output=True, text=True)
        opts = {
            "bind-address": "127.0.0.1",
            "socket": str(self.socket),
            "pid-file": str(self.base / "mysqld.pid"),
            "log-error": str(self.base / "error.log"),
            "skip-name-resolve": "",
            "skip-log-bin": "",
            "innodb-buffer-pool-size": "256M",
            "innodb-flush-log-at-trx-commit": "0",
            "innodb-doublewrite": "0",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_bin",
            "default-time-zone": "+00:00",
            "max-connections": "200",
            # not the default REPEATABLE READ: the source must set its own isolation level
            "transaction-isolation": "READ-COMMITTED",
            **(settings or {}),
        }
        chosen = self.port
        for attempt in range(1, START_ATTEMPTS + 1):
            # mariadbd cannot bind port 0 (it means the default 3306): choose a free port, and
            # choose again when another process takes it between the choice and the bind
            self.port = chosen or free_port()
            try:
                self._start(server, {**opts, "port": str(self.port)})
                break
            except PortInUse:
                if chosen or attempt == START_ATTEMPTS:
                    raise
        self.sql_admin(
            f"CREATE DATABASE {self.database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"GRANT ALL ON {self.database}.* TO '{USER}'@'127.0.0.1';"
            f"GRANT PROCESS ON *.* TO '{USER}'@'127.0.0.1';"
        )
        return self

    def _start(self, server: str, opts: dict[str, str]) -> None:
        log = self.base / "error.log"
        offset = log.stat().st_size if log.exists() else 0
        args = [server, "--no-defaults", f"--datadir={self.data_dir}"]
        args += [f"--{k}={v}" if v else f"--{k}" for k, v in opts.items()]
        if os.geteuid() == 0:
            args.append(f"--user={OWNER}")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            said = _read_from(log, offset)
            if "ready for connections" in said and self.socket.exists():
                self._proc = proc
                return
            if proc.poll() is not None:
                if "Address already in use" in said:
                    raise PortInUse(f"MariaDB could not bind 127.0.0.1:{opts['port']}")
                raise RuntimeError(f"mariadbd exited: {said.strip()[-2000:]}")
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"mariadbd not ready in {START_TIMEOUT_S:.0f} s")

    def sql_admin(self, sql: str, db: str | None = None) -> str:
        """Run `sql` as the server's root over its socket; tab-separated rows back."""
        args = ["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root"]
        args += ["--default-character-set=utf8mb4"]
        args += ["--batch", "--skip-column-names", "--raw"]
        use = db or (self.database if (self.data_dir / self.database).is_dir() else "")
        if use:
            args += ["-D", use]
        out = subprocess.run([*args, "-e", sql], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
