"""A nats-server as a deployment runs it: TLS only, one user per service allowed only its
subjects for one namespace (natsauth.permissions), and a `harness` user for the test's own
reads of the streams. `start_stack(nats_url=..., nats_users_dir=..., env=...)` runs a stack on it
with each service as its own user."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path
from typing import Any

import trustme

from sluiceway.cli.stack import write_private
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
        tls = write_leaf(server_cert(ca), directory / "tls")
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
