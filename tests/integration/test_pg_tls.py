"""A PostgreSQL source over TLS, set per source (sslmode, sslrootcert, sslcert/sslkey): a
cluster that admits TLS connections only (hostssl), an export that verifies the server's
certificate end to end, a client certificate as the login, and the failures a wrong setting
meets, each permanent and naming why."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from sluiceway.cli.stack import start_stack
from sluiceway.client import Client, ClientOptions, config_file, with_token
from sluiceway.common import config as configmod
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources import SourceError, open_source
from sluiceway.v1 import events_pb2
from tests.support.certs import client_cert, server_cert, write_ca, write_leaf
from tests.support.localpg import PASSWORD, LocalPostgres

pytestmark = pytest.mark.integration

ROWS = 1_200
CERT_USER = "certreader"  # logs in with its client certificate alone (pg_hba `cert`)

CONFIG = """
sources:
  shop:
    engine: postgres
    url_env: TLS_PG_URL
    sslmode: verify-full
    sslrootcert: ca.crt
exports:
  - name: secure
    source: shop
    table: public.tls_rows
    mode: chunked
    chunk_column: id
    chunk_size: 400
    destination: out
"""


class TlsCluster:
    def __init__(self, pg: LocalPostgres, ca: trustme.CA, ca_file: Path, files: Path) -> None:
        self.pg, self.ca, self.ca_file, self.files = pg, ca, ca_file, files

    def url(self, user: str = "") -> str:
        if not user:
            return self.pg.url
        return f"postgresql://{user}@127.0.0.1:{self.pg.port}/{self.pg.database}"


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[TlsCluster]:
    """Its own cluster: TLS on, and pg_hba.conf with hostssl lines only. The files lie in the
    cluster's base directory, which its unprivileged owner can reach."""
    pg = LocalPostgres()
    files = pg.base / "tls"
    files.mkdir()
    ca = trustme.CA()
    ca_file = write_ca(ca, files / "ca.crt")
    server = write_leaf(server_cert(ca), files)
    hba = files / "pg_hba.conf"
    hba.write_text(
        f"hostssl all {CERT_USER} 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    )
    os.chmod(server.key_file, 0o600)  # PostgreSQL refuses a key others may read
    if os.geteuid() == 0:  # the cluster runs as nobody (tests/support/localpg.py)
        for path in (files, server.cert_file, server.key_file, hba, ca_file):
            shutil.chown(path, "nobody", "nogroup")
    pg.start(
        settings={
            "ssl": "on",
            "ssl_cert_file": str(server.cert_file),
            "ssl_key_file": str(server.key_file),
            "ssl_ca_file": str(ca_file),
            "hba_file": str(hba),
        }
    )
    try:
        pg.psql_admin(
            "CREATE TABLE tls_rows (id bigint PRIMARY KEY, v text);"
            f"INSERT INTO tls_rows SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g;"
            f"CREATE ROLE {CERT_USER} LOGIN; GRANT SELECT ON tls_rows TO {CERT_USER};"
        )
        yield TlsCluster(pg, ca, ca_file, files)
    finally:
        pg.stop()


SPEC = configmod.select(
    configmod.load_text(
        "exports:\n  - {name: t, table: public.tls_rows, destination: /tmp/unused,"
        " source: {engine: postgres, url_env: TLS_PG_URL}}\n"
    ),
    "t",
)


def _count(url: str, **tls: str) -> int:
    """COUNT(*) of the table through a source with these TLS settings."""
    spec = replace(SPEC, source=replace(SPEC.source, **tls))
    source = open_source(spec, env={"TLS_PG_URL": url})
    try:
        return source.count(spec, None)
    finally:
        source.close()


async def test_an_export_verifies_the_servers_certificate_and_reads_every_row(
    tls_pg: TlsCluster, nats_server: LocalNats, namespace: str, tmp_path: Path
) -> None:
    shutil.copy(tls_pg.ca_file, tmp_path / "ca.crt")
    (tmp_path / "exports.yaml").write_text(CONFIG)
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "TLS_PG_URL": tls_pg.url()}
    stack = await asyncio.to_thread(
        start_stack, tmp_path / "state", workers=1, nats_url=nats_server.url, env=env
    )
    try:
        options = with_token(ClientOptions(timeout_s=15), stack.token())
        with Client(stack.state.control_addr, stack.state.tracker_addr, options) as c:
            run_id = c.submit(config_file(tmp_path / "exports.yaml", "secure")).run_id
            done = await asyncio.to_thread(c.wait, run_id, timeout_s=120)
            requested = next(e.event for e in c.iter_events(run_id) if e.kind == "requested")
    finally:
        await asyncio.to_thread(stack.stop)
    assert done.status == events_pb2.RUN_STATUS_SUCCEEDED, done.error_message
    assert done.total_rows == ROWS and done.manifest_parts == 3
    # the settings are facts of the log (paths and a mode, no key material)
    source = requested.run_requested.spec.source
    assert (source.sslmode, source.sslrootcert) == ("verify-full", str(tmp_path / "ca.crt"))


def test_a_client_certificate_is_the_login_when_the_source_names_one(
    tls_pg: TlsCluster, tmp_path: Path
) -> None:
    leaf = write_leaf(client_cert(tls_pg.ca, CERT_USER, "sluiceway"), tmp_path / "client")
    os.chmod(leaf.key_file, 0o600)  # libpq refuses a key others may read
    assert (
        _count(
            tls_pg.url(CERT_USER),
            sslmode="verify-full",
            sslrootcert=str(tls_pg.ca_file),
            sslcert=str(leaf.cert_file),
            sslkey=str(leaf.key_file),
        )
        == ROWS
    )
    with pytest.raises(SourceError) as without:
        _count(tls_pg.url(CERT_USER), sslmode="verify-full", sslrootcert=str(tls_pg.ca_file))
    assert not without.value.retryable


def test_a_wrong_tls_setting_fails_for_good_and_says_why(
    tls_pg: TlsCluster, tmp_path: Path
) -> None:
    # plaintext: the cluster has no hostnossl line
    with pytest.raises(SourceError) as plaintext:
        _count(tls_pg.url(), sslmode="disable")
    assert "no pg_hba.conf entry" in str(plaintext.value) and "no encryption" in str(
        plaintext.value
    )
    assert not plaintext.value.retryable
    # a server certificate from a CA the source does not trust
    other = write_ca(trustme.CA(), tmp_path / "other-ca.crt")
    with pytest.raises(SourceError) as untrusted:
        _count(tls_pg.url(), sslmode="verify-full", sslrootcert=str(other))
    assert "certificate verify failed" in str(untrusted.value)
    assert not untrusted.value.retryable
    # the URL and the source both set sslmode: refused before connecting
    with pytest.raises(SourceError, match="sslmode is set both in the source URL"):
        _count(tls_pg.url() + "?sslmode=require", sslmode="verify-full")
    for exc in (plaintext.value, untrusted.value):  # the password is never in the message
        assert PASSWORD not in str(exc)
    # and the right CA succeeds, for contrast
    assert _count(tls_pg.url(), sslmode="verify-full", sslrootcert=str(tls_pg.ca_file)) == ROWS
