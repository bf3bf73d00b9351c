"""Where the CLI finds the services, and the SDK client it talks to them with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sluiceway.cli import stack as stackmod
from sluiceway.client import Client, ClientOptions, RetryPolicy
from sluiceway.common.tlsfiles import client_credentials

NO_STACK = "no stack is running (start one with `sluiceway up`)"
# A followed run outlives a tracker restart: about a minute of reconnections that bring nothing
# (backoff 0.2 s doubling to 5 s) before `run --wait`/`watch` give up (exit 2).
CLI_OPTIONS = ClientOptions(timeout_s=30.0, plan_timeout_s=120.0, watch_retry=RetryPolicy(20))


class NoStack(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoints:
    control_addr: str
    tracker_addr: str
    token: str = ""  # a bearer token, sent with every call
    # TLS: the CA to trust (else plaintext), and a client certificate for mutual TLS
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def resolve_endpoints(
    state_dir: str | Path,
    *,
    control: str | None = None,
    tracker: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoints:
    """Flags first, then SLUICEWAY_CONTROL_ADDR / SLUICEWAY_TRACKER_ADDR, then state.json.
    The token: SLUICEWAY_TOKEN_FILE, else SLUICEWAY_TOKEN, else the local stack's own (when
    its addresses are the ones used). TLS: SLUICEWAY_TLS_CA_FILE, and for mutual TLS
    SLUICEWAY_TLS_CLIENT_CERT_FILE and SLUICEWAY_TLS_CLIENT_KEY_FILE."""
    e = os.environ if env is None else env
    c = control or e.get("SLUICEWAY_CONTROL_ADDR", "")
    t = tracker or e.get("SLUICEWAY_TRACKER_ADDR", "")
    token = ""
    if e.get("SLUICEWAY_TOKEN_FILE"):
        token = stackmod.read_token(e["SLUICEWAY_TOKEN_FILE"])
    else:
        token = e.get("SLUICEWAY_TOKEN", "").strip()
    state = stackmod.read_state(state_dir)
    if state is not None and not (c and t):
        c = c or state.control_addr
        t = t or state.tracker_addr
    if not (c and t):
        raise NoStack(NO_STACK)
    if not token and state is not None and state.token_file:
        if (c, t) == (state.control_addr, state.tracker_addr):
            token = stackmod.read_token(state.token_file)
    return Endpoints(
        c,
        t,
        token=token,
        ca_file=e.get("SLUICEWAY_TLS_CA_FILE", ""),
        cert_file=e.get("SLUICEWAY_TLS_CLIENT_CERT_FILE", ""),
        key_file=e.get("SLUICEWAY_TLS_CLIENT_KEY_FILE", ""),
    )


def stack_endpoints(stack: stackmod.Stack) -> Endpoints:
    """The endpoints of a stack this process started, with its admin token."""
    return Endpoints(stack.state.control_addr, stack.state.tracker_addr, token=stack.token())


def connect(endpoints: Endpoints) -> Client:
    """The SDK's blocking client for both APIs; close it (or use `with`). Raises TlsError
    naming a TLS file that cannot be used."""
    return Client(endpoints.control_addr, endpoints.tracker_addr, client_options(endpoints))


def client_options(endpoints: Endpoints) -> ClientOptions:
    options = CLI_OPTIONS
    if endpoints.token:
        options = replace(options, metadata=(("authorization", f"Bearer {endpoints.token}"),))
    if endpoints.ca_file or endpoints.cert_file:
        creds = client_credentials(endpoints.ca_file, endpoints.cert_file, endpoints.key_file)
        options = replace(options, credentials=creds)
    return options
