"""Service settings from the environment: fail fast, naming the variable."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sluiceway.common.bus import Names, StreamSettings, server_urls
from sluiceway.common.natsauth import NatsAuth


class SettingsError(ValueError):
    pass


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not value > 0:
        raise SettingsError(f"{name}={value}: expected a number above 0")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(|k|m|g|t)(?:i?b)?\s*$", re.IGNORECASE)


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, from `30d`, `12h`, `15m`, `2s` or a bare number of seconds (> 0)."""
    raw = env.get(name, "")
    if not raw:
        return default
    m = _DURATION.match(raw)
    if m is None or float(m.group(1)) <= 0:
        raise SettingsError(f"{name}={raw!r}: expected a duration such as 30d, 12h, 15m or 90s")
    return float(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def _size(env: Mapping[str, str], name: str) -> int:
    """Bytes, from `50GiB`, `500M`, `1T` or a bare number (binary units); -1 when unset."""
    raw = env.get(name, "")
    if not raw:
        return -1
    m = _SIZE.match(raw)
    if m is None or int(m.group(1)) <= 0:
        raise SettingsError(f"{name}={raw!r}: expected a size such as 50GiB, 500MiB or bytes")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected on or off")


def split_addr(raw: str, name: str = "address") -> tuple[str, int]:
    """'host:port' (IPv6 in brackets: '[::]:9464') -> (host, port); port 0 means any free one."""
    host, sep, port = raw.rpartition(":")
    problem = f"{name}={raw!r}: expected host:port (e.g. 0.0.0.0:9464, [::]:9464)"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SettingsError(problem)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise SettingsError(problem + "; put an IPv6 host in brackets")
    if not host or any(c.isspace() for c in host):
        raise SettingsError(problem)
    return host, int(port)


def _addr(env: Mapping[str, str], name: str) -> str:
    """An optional listen address: '' (off) or a valid host:port."""
    raw = env.get(name, "").strip()
    if raw:
        split_addr(raw, name)
    return raw


@dataclass(frozen=True)
class Settings:
    nats_url: str  # one URL, or a cluster's nodes separated by commas
    names: Names
    stream_replicas: int
    instance: str
    ready_file: str
    control_addr: str
    tracker_addr: str
    tracker_db: str
    worker_ack_wait_s: float
    worker_heartbeat_s: float
    worker_max_deliver: int
    # capped exponential backoff between attempts of a chunk: base * 2^(attempt-1), at most max
    worker_backoff_base_ms: int
    worker_backoff_max_ms: int
    # ack_wait of the planner's and committer's run-event consumers: how soon a message whose
    # handler died (a crash) is delivered again
    consumer_ack_wait_s: float
    # the scheduler (in the planner): on unless SLUICEWAY_SCHEDULER=off; how often it ticks;
    # how late an occurrence may be and still count as on time (older: missed, see catch_up)
    scheduler: bool = True
    scheduler_tick_s: float = 1.0
    scheduler_grace_s: float = 60.0
    # tests only: the scheduler reads its time from this file (ISO-8601), not the system clock
    clock_file: str = ""
    # how many seconds of waiting raise a queued chunk task's priority by one level
    priority_aging_s: float = 60.0
    # consistent_snapshot: the longest the planner holds a run's exported snapshot open
    snapshot_max_hold_s: float = 6 * 3600.0
    # the Prometheus /metrics endpoint ('' = off) and, for worker and committer (which have no
    # gRPC API), a grpc.health.v1 server for probes ('' = off)
    metrics_addr: str = ""
    health_addr: str = ""
    # who may call the Control and Tracker APIs (docs/security.md): on unless SLUICEWAY_AUTH=off
    # (the local stack may turn it off, explicitly; a deployed one never does), then the
    # principals file is required
    auth: bool = True
    auth_principals_file: str = ""
    # TLS of the gRPC APIs: certificate and key files (re-read when they change); with a client
    # CA, clients must present a certificate it signed (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # NATS: this service's user and the file with its password (docs/security.md), and the CA
    # of the server's certificate (TLS: nats-server's `tls` block, a tls:// URL)
    nats_user: str = ""
    nats_password_file: str = ""
    nats_ca_file: str = ""
    # retention of the run stream: a run that ended this long ago is archived, then purged
    # (with an archive set; without one, history is kept); the stream's size bound (-1: none);
    # where archived history goes (a directory or an object-store URL) and how often to look
    runs_max_age_s: float = 30 * 86400.0
    runs_max_bytes: int = -1
    archive: str = ""
    archive_interval_s: float = 60.0
    # webhook notifications of ended runs (the committer): the URL and the HMAC secret are
    # secrets, never shown; the reasons notified (failed, schema_changed, degraded)
    webhook_url: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)
    webhook_on: frozenset[str] = frozenset()

    def stream_settings(self) -> StreamSettings:
        """The streams as every service declares them (all must agree, or they would keep
        updating each other's configuration)."""
        return StreamSettings(replicas=self.stream_replicas, runs_max_bytes=self.runs_max_bytes)

    def nats_options(self) -> dict[str, Any]:
        """nats.connect's keyword arguments for this service's user and TLS. Raises
        SettingsError naming the variable of a file that cannot be read."""
        auth = NatsAuth(self.nats_user, self.nats_password_file, self.nats_ca_file)
        try:
            return auth.options()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        replicas = _int(e, "SLUICEWAY_STREAM_REPLICAS", 1)
        if replicas not in (1, 3, 5):
            raise SettingsError(f"SLUICEWAY_STREAM_REPLICAS={replicas}: expected 1, 3 or 5")
        ns = e.get("SLUICEWAY_NAMESPACE", "sluiceway")
        if not ns.replace("_", "").isalnum() or not ns.islower():
            raise SettingsError(f"SLUICEWAY_NAMESPACE={ns!r}: lower-case letters, digits and '_'")
        nats_url = e.get("SLUICEWAY_NATS_URL", "nats://127.0.0.1:4222")
        try:
            server_urls(nats_url)
        except ValueError as exc:
            raise SettingsError(f"SLUICEWAY_NATS_URL: {exc}") from None
        return cls(
            nats_url=nats_url,
            names=Names(ns),
            stream_replicas=replicas,
            instance=e.get("SLUICEWAY_INSTANCE", f"{socket.gethostname()}-{os.getpid()}"),
            ready_file=e.get("SLUICEWAY_READY_FILE", ""),
            control_addr=e.get("SLUICEWAY_CONTROL_ADDR", "127.0.0.1:50051"),
            tracker_addr=e.get("SLUICEWAY_TRACKER_ADDR", "127.0.0.1:50052"),
            tracker_db=e.get("SLUICEWAY_TRACKER_DB", ".sluiceway/tracker.duckdb"),
            worker_ack_wait_s=_float(e, "SLUICEWAY_WORKER_ACK_WAIT_S", 60.0),
            worker_heartbeat_s=_float(e, "SLUICEWAY_WORKER_HEARTBEAT_S", 10.0),
            worker_max_deliver=_int(e, "SLUICEWAY_WORKER_MAX_DELIVER", 10),
            worker_backoff_base_ms=_int(e, "SLUICEWAY_WORKER_BACKOFF_BASE_MS", 1_000),
            worker_backoff_max_ms=_int(e, "SLUICEWAY_WORKER_BACKOFF_MAX_MS", 60_000),
            consumer_ack_wait_s=_float(e, "SLUICEWAY_CONSUMER_ACK_WAIT_S", 30.0),
            scheduler=_switch(e, "SLUICEWAY_SCHEDULER", True),
            scheduler_tick_s=_positive(e, "SLUICEWAY_SCHEDULER_TICK_S", 1.0),
            scheduler_grace_s=_positive(e, "SLUICEWAY_SCHEDULER_GRACE_S", 60.0),
            clock_file=e.get("SLUICEWAY_CLOCK_FILE", ""),
            priority_aging_s=_positive(e, "SLUICEWAY_PRIORITY_AGING_S", 60.0),
            snapshot_max_hold_s=_float(e, "SLUICEWAY_SNAPSHOT_MAX_HOLD_S", 6 * 3600.0),
            metrics_addr=_addr(e, "SLUICEWAY_METRICS_ADDR"),
            health_addr=_addr(e, "SLUICEWAY_HEALTH_ADDR"),
            auth=_switch(e, "SLUICEWAY_AUTH", True),
            auth_principals_file=e.get("SLUICEWAY_AUTH_PRINCIPALS_FILE", ""),
            tls_cert_file=e.get("SLUICEWAY_TLS_CERT_FILE", ""),
            tls_key_file=e.get("SLUICEWAY_TLS_KEY_FILE", ""),
            tls_client_ca_file=e.get("SLUICEWAY_TLS_CLIENT_CA_FILE", ""),
            nats_user=e.get("SLUICEWAY_NATS_USER", ""),
            nats_password_file=e.get("SLUICEWAY_NATS_PASSWORD_FILE", ""),
            nats_ca_file=e.get("SLUICEWAY_NATS_CA_FILE", ""),
            runs_max_age_s=_duration(e, "SLUICEWAY_RUNS_MAX_AGE", 30 * 86400.0),
            runs_max_bytes=_size(e, "SLUICEWAY_RUNS_MAX_BYTES"),
            archive=e.get("SLUICEWAY_ARCHIVE", ""),
            archive_interval_s=_duration(e, "SLUICEWAY_ARCHIVE_INTERVAL_S", 60.0),
            webhook_url=_webhook_url(e, "SLUICEWAY_WEBHOOK_URL"),
            webhook_secret=e.get("SLUICEWAY_WEBHOOK_SECRET", ""),
            webhook_on=_reasons(e, "SLUICEWAY_WEBHOOK_ON"),
        )


# the committer's notify.REASONS (a service's domain is not imported here)
WEBHOOK_REASONS = ("failed", "schema_changed", "degraded")


def _webhook_url(env: Mapping[str, str], name: str) -> str:
    """An http(s) URL with a host, or "" (no webhook). The value is never shown: it may hold
    a token."""
    raw = env.get(name, "").strip()
    if not raw:
        return ""
    try:
        u = urlsplit(raw)
        ok = u.scheme in ("http", "https") and bool(u.hostname)
        u.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        ok = False
    if not ok:
        raise SettingsError(f"{name}: expected an http:// or https:// URL with a host")
    return raw


def _reasons(env: Mapping[str, str], name: str) -> frozenset[str]:
    names = [n.strip() for n in env.get(name, "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(WEBHOOK_REASONS))
    if unknown:
        raise SettingsError(
            f"{name}: unknown reason(s) {', '.join(unknown)} "
            f"(expected some of: {', '.join(WEBHOOK_REASONS)})"
        )
    return frozenset(names or WEBHOOK_REASONS)
