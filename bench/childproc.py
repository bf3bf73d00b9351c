"""Child processes of the references: output in temp files, bounded waits, their own peak RSS,
and a password that never reaches argv or an exception.

Peak RSS is the child's VmHWM, read by the child itself at its end (`peak_rss_mb()`): wait4's
ru_maxrss is no use here, because Linux carries the parent's high-water mark across fork and
exec into the child's (a child of a 500 MB parent reports 500 MB)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
DSN_ENV = "BENCH_REF_PG_DSN"  # the children's DSN, without its password (that is PGPASSWORD)


@dataclass
class Secrets:
    """What a child may be given, and what must never leave it: the password."""

    dsn: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> Secrets:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(url)
        password = str(params.pop("password", "") or "")
        return cls(make_conninfo("", **params), password)

    def env(self) -> dict[str, str]:
        env = {**os.environ, DSN_ENV: self.dsn}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def scrub(self, text: str) -> str:
        from sluiceway.common.redact import redact

        if self.password:
            text = text.replace(self.password, "***")
        return redact(text)


@dataclass
class Child:
    """A child process, its output in temp files (no pipe to fill up), reaped by waitpid."""

    what: str
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    exitcode: int | None = None
    wall_s: float = 0.0
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def spawn(cls, what: str, argv: list[str], env: dict[str, str]) -> Child:
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
        return cls(what, proc, out, err)

    def poll(self, block: bool = False) -> bool:
        """Reap the child if it has ended: exit code, wall time, its output."""
        pid, status = os.waitpid(self.proc.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.exitcode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exitcode  # reaped here: Popen must not wait for it again
        self.wall_s = time.monotonic() - self.started
        for stream, attr in ((self.out, "stdout"), (self.err, "stderr")):
            stream.seek(0)
            setattr(self, attr, stream.read().decode("utf-8", "replace"))
            stream.close()
        return True

    def kill(self) -> None:
        if self.exitcode is None:
            self.proc.kill()
            self.poll(block=True)

    def result(self) -> dict[str, Any]:
        """The JSON document the child printed last."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"{self.what} printed no result")
        return dict(json.loads(lines[-1]))


def peak_rss_mb() -> float | None:
    """This process's own peak RSS since exec (VmHWM), in MB as bench/run.py reports them."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def wait_all(children: Sequence[Child], secrets: Secrets, timeout_s: float) -> None:
    """Reap every child; the first failure (or the deadline) kills the rest and raises with
    that child's stderr, scrubbed."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    try:
        while pending:
            for child in list(pending):
                if not child.poll():
                    continue
                pending.remove(child)
                if child.exitcode != 0:
                    err = secrets.scrub(child.stderr.strip()[-4000:])
                    raise RuntimeError(f"{child.what} exited {child.exitcode}:\n{err}")
            if pending and time.monotonic() > deadline:
                late = pending[0]
                late.kill()
                err = secrets.scrub(late.stderr.strip()[-4000:])
                raise TimeoutError(f"{late.what} still running after {timeout_s:.0f}s:\n{err}")
            time.sleep(0.02)
    finally:
        for child in pending:
            child.kill()
