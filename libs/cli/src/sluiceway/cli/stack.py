"""Process management for a local stack: nats-server, planner, committer, tracker and N workers.

Every process runs in its own session (process group) so that `down` can stop it, and its
children, from another process. `state.json` records each pid with its creation time: a pid that
the kernel has since given to another process is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml

from sluiceway.client.options import bearer_interceptors
from sluiceway.common import natsauth, principals
from sluiceway.common.bus import Names
from sluiceway.common.localnats import LocalNats

SERVICES = ("planner", "committer", "tracker")
STATE_FILE = "state.json"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message is one line."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class ProcInfo:
    name: str  # instance name: planner-1, worker-2, nats-server
    service: str
    pid: int
    create_time: float
    log: str = ""


@dataclass
class StackState:
    state_dir: str
    nats_url: str
    control_addr: str = ""
    tracker_addr: str = ""
    nats_started: bool = False
    processes: list[ProcInfo] = field(default_factory=list)
    started_at: float = 0.0
    # the bearer token of the stack's own admin principal (a file only its owner may read);
    # '' when authentication is off or the principals file is the caller's own
    token_file: str = ""
    # the stack's own nats-server has one user per service; their password files are here
    # ('' when the stack uses a nats-server it did not start)
    nats_users_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StackState:
        procs = [ProcInfo(**p) for p in raw.get("processes", [])]
        return cls(
            state_dir=str(raw.get("state_dir", "")),
            nats_url=str(raw.get("nats_url", "")),
            control_addr=str(raw.get("control_addr", "")),
            tracker_addr=str(raw.get("tracker_addr", "")),
            nats_started=bool(raw.get("nats_started", False)),
            processes=procs,
            started_at=float(raw.get("started_at", 0.0)),
            token_file=str(raw.get("token_file", "")),
            nats_users_dir=str(raw.get("nats_users_dir", "")),
        )

    def service_pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for p in self.processes:
            out.setdefault(p.service, []).append(p.pid)
        return out


# ---- state file --------------------------------------------------------------------------------


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: str | Path) -> StackState | None:
    """The recorded stack, or None when there is no (readable) state file."""
    path = state_path(state_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"{path}: unreadable state file ({exc})") from exc
    if not isinstance(raw, dict):
        raise StackError(f"{path}: unreadable state file (not an object)")
    return StackState.from_dict(raw)


def write_state(state: StackState) -> Path:
    path = state_path(state.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
    return path


def is_alive(proc: ProcInfo) -> bool:
    """True if the pid still runs the process we started (same creation time), not a zombie."""
    try:
        p = psutil.Process(proc.pid)
        if abs(p.create_time() - proc.create_time) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def alive(state: StackState) -> list[ProcInfo]:
    return [p for p in state.processes if is_alive(p)]


# ---- starting ----------------------------------------------------------------------------------


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return 0.0


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        data = Path(path).read_bytes()[-16_384:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass
class Stack:
    """A started stack. `procs` holds the Popen handles when this process started it."""

    state: StackState
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    nats: LocalNats | None = None
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # each instance's environment

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        stop_state(self.state, timeout_s=timeout_s)
        for p in self.procs.values():  # reap our own children
            with contextlib.suppress(Exception):
                p.wait(timeout=1)
        if self.nats is not None and self.nats.proc is not None:
            with contextlib.suppress(Exception):
                self.nats.proc.wait(timeout=1)
        with contextlib.suppress(FileNotFoundError):
            state_path(self.state.state_dir).unlink()

    def restart(
        self,
        inst: str,
        *,
        env: Mapping[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> ProcInfo:
        """Start instance `inst` again (after it died or was killed) with its environment,
        updated by `env` and without `drop_env`; wait until it is ready."""
        old = next(p for p in self.state.processes if p.name == inst)
        if is_alive(old):
            raise StackError(f"{inst} is still running (pid {old.pid})")
        child_env = {k: v for k, v in self.envs[inst].items() if k not in drop_env}
        child_env.update(env or {})
        self.state.processes.remove(old)
        info = _spawn(self, old.service, inst, child_env)
        write_state(self.state)
        _wait_ready(self, {inst: Path(child_env["SLUICEWAY_READY_FILE"])}, ready_timeout_s)
        return info

    def token(self) -> str:
        """The stack's admin token ('' when authentication is off)."""
        return read_token(self.state.token_file) if self.state.token_file else ""

    def channel(self, addr: str) -> grpc.aio.Channel:
        """A grpc.aio channel to one of the stack's APIs that sends its admin token."""
        return grpc.aio.insecure_channel(addr, interceptors=bearer_interceptors(self.token()))

    def dead(self) -> list[ProcInfo]:
        """Services (started by us) that have exited."""
        out = []
        for p in self.state.processes:
            popen = self.procs.get(p.name)
            if popen is not None and popen.poll() is not None:
                out.append(p)
        return out


def start_stack(
    state_dir: str | Path,
    *,
    workers: int = 2,
    nats_url: str | None = None,
    nats_users_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    instance_env: Mapping[str, Mapping[str, str]] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    on_progress: Callable[[str], None] | None = None,
) -> Stack:
    """Start nats-server (unless `nats_url`) and every service; wait for every ready file;
    write state.json. On any failure, stop what was started and raise StackError.
    `nats_users_dir` (with `nats_url`) holds `<service>.password` files: each service connects
    to that server as its own user. `instance_env` adds variables to single instances
    ("worker-1": {...})."""
    sd = Path(state_dir).resolve()
    existing = read_state(sd)
    if existing is not None:
        running = alive(existing)
        if running:
            names = ", ".join(f"{p.name}={p.pid}" for p in running)
            raise StackError(
                f"a stack is already running in {sd} ({names}); stop it with `sluiceway down`"
            )
        state_path(sd).unlink(missing_ok=True)
    if workers < 1:
        raise StackError("--workers must be at least 1")
    for sub in ("run", "logs"):
        (sd / sub).mkdir(parents=True, exist_ok=True)
    say = on_progress or (lambda _m: None)

    state = StackState(state_dir=str(sd), nats_url=nats_url or "", started_at=time.time())
    if nats_url and nats_users_dir:
        state.nats_users_dir = str(Path(nats_users_dir).resolve())
    stack = Stack(state=state)
    base_env = dict(os.environ if env is None else env)
    try:
        if not nats_url:
            say("starting nats-server")
            nats = LocalNats(
                store_dir=sd / "nats",
                log_file=sd / "logs" / "nats-server.log",
                config_file=_nats_users(sd, base_env, state),
            )
            stack.nats = nats
            try:
                nats.start()
            finally:
                if nats.proc is not None:
                    state.processes.append(
                        ProcInfo(
                            "nats-server",
                            "nats-server",
                            nats.proc.pid,
                            _create_time(nats.proc.pid),
                            str(sd / "logs" / "nats-server.log"),
                        )
                    )
            state.nats_url = nats.url
            state.nats_started = True

        base_env.update(_local_auth(sd, base_env, state))
        instances = [(svc, f"{svc}-1") for svc in SERVICES]
        instances += [("worker", f"worker-{i}") for i in range(1, workers + 1)]
        ready: dict[str, Path] = {}
        for svc, inst in instances:
            ready_file = sd / "run" / f"{inst}.json"
            child_env = {
                **base_env,
                "SLUICEWAY_NATS_URL": state.nats_url,
                "SLUICEWAY_CONTROL_ADDR": "127.0.0.1:0",
                "SLUICEWAY_TRACKER_ADDR": "127.0.0.1:0",
                "SLUICEWAY_TRACKER_DB": str(sd / "tracker.duckdb"),
                # retention's archive: beside the read model unless the caller names one
                "SLUICEWAY_ARCHIVE": base_env.get("SLUICEWAY_ARCHIVE") or str(sd / "archive"),
                "SLUICEWAY_READY_FILE": str(ready_file),
                "SLUICEWAY_INSTANCE": inst,
                "PYTHONUNBUFFERED": "1",
                **nats_user_env(state, svc),
                **(instance_env or {}).get(inst, {}),
            }
            _spawn(stack, svc, inst, child_env)
            ready[inst] = ready_file
        # record pids before waiting, so that `down` can clean up even if we are killed now
        write_state(state)
        say(f"waiting for {len(ready)} services")
        _wait_ready(stack, ready, ready_timeout_s)
        write_state(state)
        return stack
    except BaseException:
        stack.stop()
        raise


def _spawn(stack: Stack, svc: str, inst: str, env: dict[str, str]) -> ProcInfo:
    """Start one service instance in its own session, logging to logs/<inst>.log."""
    sd = Path(stack.state.state_dir)
    Path(env["SLUICEWAY_READY_FILE"]).unlink(missing_ok=True)
    log_file = sd / "logs" / f"{inst}.log"
    with open(log_file, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", f"sluiceway.{svc}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    stack.procs[inst] = popen
    stack.envs[inst] = env
    info = ProcInfo(inst, svc, popen.pid, _create_time(popen.pid), str(log_file))
    stack.state.processes.append(info)
    return info


def _wait_ready(stack: Stack, ready: dict[str, Path], timeout_s: float) -> None:
    state = stack.state
    pending = dict(ready)
    deadline = time.monotonic() + timeout_s
    while pending:
        for inst, path in list(pending.items()):
            popen = stack.procs[inst]
            if popen.poll() is not None:
                info = next(p for p in state.processes if p.name == inst)
                raise StackError(
                    f"{inst} exited during startup with code {popen.returncode} (log: {info.log})",
                    detail=log_tail(info.log),
                )
            try:
                info_json = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if "control_addr" in info_json:
                state.control_addr = str(info_json["control_addr"])
            if "tracker_addr" in info_json:
                state.tracker_addr = str(info_json["tracker_addr"])
            del pending[inst]
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            first = next(p for p in state.processes if p.name == sorted(pending)[0])
            raise StackError(
                f"not ready after {timeout_s:.0f}s: {names} (log: {first.log})",
                detail=log_tail(first.log),
            )
        time.sleep(0.1)
    if not state.control_addr or not state.tracker_addr:
        raise StackError("ready files did not name control_addr/tracker_addr")


LOCAL_ADMIN = "local-admin"


def _nats_users(sd: Path, env: Mapping[str, str], state: StackState) -> Path:
    """The stack's own nats-server admits one user per service, each allowed only its
    subjects (natsauth.permissions), with random passwords in files only their owner reads."""
    users_dir = sd / "auth" / "nats"
    users_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords = {s: secrets.token_urlsafe(24) for s in natsauth.SERVICES}
    for service, password in passwords.items():
        write_private(users_dir / f"{service}.password", password + "\n")
    names = Names(env.get("SLUICEWAY_NAMESPACE", "sluiceway"))
    config = users_dir / "nats-users.conf"
    write_private(config, natsauth.authorization_block(names, passwords))
    state.nats_users_dir = str(users_dir)
    return config


def nats_user_env(state: StackState, service: str) -> dict[str, str]:
    """How `service` connects to the stack's nats-server ({} for a server whose users the
    stack does not know)."""
    if not state.nats_users_dir:
        return {}
    return {
        "SLUICEWAY_NATS_USER": service,
        "SLUICEWAY_NATS_PASSWORD_FILE": str(Path(state.nats_users_dir) / f"{service}.password"),
    }


def _local_auth(sd: Path, env: Mapping[str, str], state: StackState) -> dict[str, str]:
    """Authentication of a local stack: on, with a principals file of one admin whose token is
    written for the CLI (0600, beside state.json), unless the environment turns it off
    (SLUICEWAY_AUTH=off) or names its own principals file."""
    if env.get("SLUICEWAY_AUTH", "").strip().lower() in ("0", "off", "false", "no"):
        return {}
    if env.get("SLUICEWAY_AUTH_PRINCIPALS_FILE"):
        return {}
    auth_dir = sd / "auth"
    auth_dir.mkdir(mode=0o700, exist_ok=True)
    token = principals.new_token()
    token_file = auth_dir / f"{LOCAL_ADMIN}.token"
    write_private(token_file, token + "\n")
    doc = {
        "principals": [
            {
                "name": LOCAL_ADMIN,
                "role": "admin",
                "tokens": [{"sha256": principals.token_digest(token), "note": "sluiceway up"}],
            }
        ]
    }
    principals_file = auth_dir / "principals.yaml"
    write_private(principals_file, yaml.safe_dump(doc, sort_keys=False))
    state.token_file = str(token_file)
    return {"SLUICEWAY_AUTH": "on", "SLUICEWAY_AUTH_PRINCIPALS_FILE": str(principals_file)}


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_token(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise StackError(f"{path}: cannot read the token ({exc.strerror})") from None


# ---- stopping ----------------------------------------------------------------------------------


def _signal(proc: ProcInfo, sig: int) -> None:
    if not is_alive(proc):
        return
    try:
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)


def _wait_gone(procs: list[ProcInfo], timeout_s: float) -> list[ProcInfo]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in procs if is_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if is_alive(p)]
    return left


def stop_state(state: StackState, *, timeout_s: float = STOP_TIMEOUT_S) -> list[ProcInfo]:
    """SIGTERM the services, wait, SIGKILL leftovers; then the same for nats-server (last, so
    that services can drain). Returns the processes that needed SIGKILL."""
    services = [p for p in state.processes if p.service != "nats-server"]
    nats = [p for p in state.processes if p.service == "nats-server"]
    killed: list[ProcInfo] = []
    for group in (services, nats):
        for p in group:
            _signal(p, signal.SIGTERM)
        left = _wait_gone(group, timeout_s)
        for p in left:
            _signal(p, signal.SIGKILL)
        killed += left
        _wait_gone(left, 5.0)
    return killed


def down(state_dir: str | Path, *, timeout_s: float = STOP_TIMEOUT_S) -> StackState | None:
    """Stop the stack recorded in state_dir; None when there is none."""
    state = read_state(state_dir)
    if state is None:
        return None
    stop_state(state, timeout_s=timeout_s)
    state_path(state_dir).unlink(missing_ok=True)
    return state
