"""Secured as deployed. SecureNats: a nats-server over TLS only, one user per service allowed
only its subjects for one namespace (natsauth.permissions), and a `harness` user for the test's
own reads of the streams; `start_stack(nats_url=..., nats_users_dir=..., env=...)` runs a stack
on it with each service as its own user. SecuredStack: such a stack with TLS on both gRPC APIs
too."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trustme

from sluiceway.cli.client import Endpoints
from sluiceway.cli.stack import start_stack, write_private
from sluiceway.common.bus import Names
from sluiceway.common.localnats import LocalNats
from sluiceway.common.natsauth import SERVICES, authorization_block
from tests.support.certs import server_cert, write_ca, write_leaf

HARNESS = "harness"


class SecureNats:
    def __init__(self, directory: Path, names: Names, log_file: Path | None = None) -> None:
        self.directory = directory
        self.names = names
        self.users_dir = directory / "users"
        self.users_dir.mkdir(parents=True, mode=0o700)
        ca = trustme.CA()
        self.ca_file = write_ca(ca, directory / "ca.crt")
        self.tls = tls = write_leaf(server_cert(ca), directory / "tls")
        self.passwords = {s: secrets.token_urlsafe(24) for s in (*SERVICES, HARNESS)}
        for user, password in self.passwords.items():
            write_private(self.users_dir / f"{user}.password", password + "\n")
        harness = {"user": HARNESS, "password": self.passwords[HARNESS]}  # no limits
        conf = directory / "nats.conf"
        write_private(
            conf,
            authorization_block(names, self.passwords, extra_users=[harness])
            + f'tls: {{cert_file: "{tls.cert_file}", key_file: "{tls.key_file}"}}\n',
        )
        self.server = LocalNats(store_dir=directory / "store", config_file=conf, log_file=log_file)

    def start(self) -> SecureNats:
        self.server.start()
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def env(self) -> dict[str, str]:
        """What every service needs beside its user (start_stack's nats_users_dir gives that)."""
        return {"SLUICEWAY_NATS_CA_FILE": str(self.ca_file)}

    def options(self) -> dict[str, Any]:
        """nats.connect keyword arguments of the harness user."""
        return {
            "user": HARNESS,
            "password": self.passwords[HARNESS],
            "tls": ssl.create_default_context(cafile=str(self.ca_file)),
        }


class SecuredStack:
    """A local stack secured as deployed: NATS as above, bearer tokens, and TLS on both gRPC
    APIs (a CA of its own). `endpoints()` reaches it over TLS with the admin token."""

    def __init__(self, work: Path, namespace: str, env: Mapping[str, str], workers: int) -> None:
        self.nats = SecureNats(work / "nats", Names(namespace)).start()
        try:
            ca = trustme.CA()
            self.api_ca_file = write_ca(ca, work / "api-ca.crt")
            self.api_tls = write_leaf(server_cert(ca), work / "api-tls")
            self.stack = start_stack(
                work / "state",
                workers=workers,
                nats_url=self.nats.url,
                nats_users_dir=self.nats.users_dir,
                env={
                    **env,
                    "SLUICEWAY_NAMESPACE": namespace,
                    **self.nats.env(),
                    "SLUICEWAY_TLS_CERT_FILE": str(self.api_tls.cert_file),
                    "SLUICEWAY_TLS_KEY_FILE": str(self.api_tls.key_file),
                },
            )
        except BaseException:
            self.nats.server.stop()
            raise

    def endpoints(self) -> Endpoints:
        state = self.stack.state
        return Endpoints(
            state.control_addr,
            state.tracker_addr,
            token=self.stack.token(),
            ca_file=str(self.api_ca_file),
        )

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.nats.server.stop()
