"""Who may publish and subscribe what on NATS: one user per service, allowed only the subjects
that service appends and consumes (the worker cannot append a ManifestCommitted, the tracker
appends nothing, no service reads another's replies), rendered as a nats-server
`authorization` block; and how a service connects as its user, over TLS."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluiceway.common.bus import Names

SERVICES = ("planner", "worker", "committer", "tracker")

# the run-event kinds each service appends (subject `<ns>.runs.<run>.<kind>[.<token>]`)
APPENDS: dict[str, tuple[str, ...]] = {
    "planner": (
        "requested",
        "plan_resolved",
        "plan_warning",
        "schema_changed",
        "warning",
        "cancel_requested",
        "scheduled.*",
        "ready",
        "completed",
    ),
    "worker": (
        "chunk_started.*",
        "file_written",
        "chunk_completed.*",
        "chunk_failed",
        "retry_attempted",
        "warning",
    ),
    "committer": (
        "quality_issue",
        "schema_changed",
        "validation_result",
        "reconciliation_result",
        "manifest_committed.*",
        "warning",
        "completed",
    ),
    "tracker": (),
}


# the export-state subjects each service writes (`<ns>.state.<kind>.<export>`): the committer
# its commits, the scheduler its occurrences, and a planner's backfill all of them
STATE_WRITES: dict[str, tuple[str, ...]] = {
    "planner": ("commit.*", "baseline.*", "scheduled.*", "meta.*"),
    "worker": (),
    "committer": ("commit.*", "baseline.*"),
    "tracker": (),
}


def inbox_prefix(service: str) -> str:
    """Each service's replies arrive under its own prefix, which only it may subscribe to."""
    return f"_INBOX_{service}"


def permissions(service: str, names: Names) -> dict[str, Any]:
    """The publish/subscribe allow-lists of one service's user."""
    runs, tasks, state = names.runs_stream, names.tasks_stream, names.state_stream
    ns = names.namespace
    publish = [
        "$JS.API.INFO",
        *(
            f"$JS.API.STREAM.{op}.{s}"
            for op in ("INFO", "CREATE", "UPDATE")
            for s in (runs, tasks, state)
        ),
        # single-message reads of the run log and the export state (the last fact on a subject)
        *(f"$JS.API.STREAM.MSG.GET.{s}" for s in (runs, state)),
        *(f"$JS.API.DIRECT.GET.{s}" for s in (runs, state)),
        *(f"$JS.API.DIRECT.GET.{s}.>" for s in (runs, state)),
    ]
    publish += [f"{ns}.runs.*.{kind}" for kind in APPENDS[service]]
    publish += [f"{ns}.state.{kind}" for kind in STATE_WRITES[service]]
    consumes_runs = service in ("planner", "committer", "tracker")
    if consumes_runs:  # durable or ephemeral consumers over the run log
        publish += _consumer_api(runs)
    if service == "planner":
        publish += [f"{ns}.tasks.chunk", f"{ns}.tasks.chunk.*"]
        bucket = f"KV_{ns.upper()}_SCHEDULES"
        publish += [
            f"$JS.API.STREAM.{op}.{bucket}" for op in ("INFO", "CREATE", "UPDATE", "MSG.GET")
        ]
        publish += [f"$JS.API.DIRECT.GET.{bucket}.>", f"$KV.{ns.upper()}_SCHEDULES.>"]
        publish += _consumer_api(bucket)
    if service == "tracker":  # retention: the archived prefix of the run log, and only that
        publish.append(f"$JS.API.STREAM.PURGE.{runs}")
    if service == "worker":  # the task lanes: take, ack, nak, heartbeat; a lane's oldest task
        publish += _consumer_api(tasks)
        publish += [f"$JS.API.STREAM.MSG.GET.{tasks}", f"$JS.API.DIRECT.GET.{tasks}"]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"{inbox_prefix(service)}.>"]},
    }


def _consumer_api(stream: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]


def authorization_block(
    names: Names, passwords: Mapping[str, str], extra_users: list[dict[str, Any]] | None = None
) -> str:
    """The nats-server `authorization { users = [...] }` block (JSON is valid NATS config).
    `passwords[service]` is the password itself, or a `$VARIABLE` the server expands from its
    environment (so that the file holds no secret). `extra_users` are listed as given."""
    users = list(extra_users or [])
    for service in SERVICES:
        password = passwords[service]
        users.append(
            {
                "user": service,
                "password": password,
                "permissions": permissions(service, names),
            }
        )
    text = json.dumps({"users": users}, indent=2)
    # a $VARIABLE is expanded by nats-server only when it is not quoted
    for service in SERVICES:
        if passwords[service].startswith("$"):
            text = text.replace(json.dumps(passwords[service]), passwords[service])
    return f"authorization: {text}\n"


@dataclass(frozen=True)
class NatsAuth:
    """How one service connects: its user, the file holding its password, and the CA that
    signed the server's certificate (TLS when set)."""

    user: str = ""
    password_file: str = ""
    ca_file: str = ""

    def options(self) -> dict[str, Any]:
        """Keyword arguments of nats.connect. Raises ValueError naming an unreadable file."""
        out: dict[str, Any] = {}
        if self.user:
            out["user"] = self.user
            out["password"] = _read(self.password_file, "SLUICEWAY_NATS_PASSWORD_FILE")
            out["inbox_prefix"] = inbox_prefix(self.user)
        if self.ca_file:
            try:
                out["tls"] = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"SLUICEWAY_NATS_CA_FILE={self.ca_file}: {exc}") from None
        return out


def _read(path: str, setting: str) -> str:
    if not path:
        raise ValueError(f"{setting} is required with SLUICEWAY_NATS_USER")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{setting}={path}: cannot read ({exc.strerror})") from None
