"""A MySQL/MariaDB source over TLS (sslmode, sslrootcert): a server that refuses plaintext
(require_secure_transport), an export whose metadata session and every ConnectorX read verify
the server's certificate, and the failures a wrong setting meets, each permanent and quick."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from sluiceway.cli.stack import start_stack
from sluiceway.common import config as configmod
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources import SourceError, open_source
from sluiceway.v1 import events_pb2
from tests.support.certs import write_ca, write_leaf
from tests.support.localmaria import OWNER, PASSWORD, LocalMariaDB
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

ROWS = 3_000
CONFIG = """
sources:
  shop:
    engine: mysql
    url_env: TLS_MY_URL
    sslmode: verify-full
    sslrootcert: ca.crt
exports:
  - name: secure
    source: shop
    table: tls_rows
    mode: chunked
    chunk_column: id
    chunk_size: 1000
    destination: out
"""


@pytest.fixture(scope="module")
def tls_maria() -> Iterator[tuple[LocalMariaDB, Path]]:
    """Its own server: TLS with a trustme certificate, plaintext refused. Yields it and the
    CA file."""
    maria = LocalMariaDB()
    files = maria.base / "tls"
    files.mkdir(parents=True)
    ca = trustme.CA()
    ca_file = write_ca(ca, files / "ca.crt")
    # named for localhost only: verify-full to 127.0.0.1 must fail where verify-ca passes
    server = write_leaf(ca.issue_cert("localhost"), files)
    if os.geteuid() == 0:  # the server runs unprivileged (tests/support/localmaria.py)
        for path in (files, server.cert_file, server.key_file, ca_file):
            shutil.chown(path, OWNER, "nogroup")
    maria.start(
        settings={
            "ssl-cert": str(server.cert_file),
            "ssl-key": str(server.key_file),
            "ssl-ca": str(ca_file),
            "require-secure-transport": "ON",
        }
    )
    try:
        maria.sql_admin(
            "CREATE TABLE tls_rows (id bigint PRIMARY KEY, v varchar(40));"
            f"INSERT INTO tls_rows SELECT seq, CONCAT('row ', seq) FROM seq_1_to_{ROWS};"
        )
        yield maria, ca_file
    finally:
        maria.stop()


SPEC = configmod.select(
    configmod.load_text(
        "exports:\n  - {name: t, table: tls_rows, destination: /tmp/unused,"
        " source: {engine: mysql, url_env: TLS_MY_URL}}\n"
    ),
    "t",
)


def _count_and_read(url: str, **tls: str) -> tuple[int, int]:
    """(COUNT(*), rows read) of the table through a source with these TLS settings: the
    PyMySQL session counts, a ConnectorX session reads."""
    spec = replace(SPEC, source=replace(SPEC.source, **tls))
    source = open_source(spec, env={"TLS_MY_URL": url})
    try:
        count = source.count(spec, None)
        counted, batches = source.count_and_read(spec, None, ())
        rows = sum(b.num_rows for b in batches)
        assert counted == count
        return count, rows
    finally:
        source.close()


def test_an_export_verifies_the_servers_certificate_and_reads_every_row(
    tls_maria: tuple[LocalMariaDB, Path], nats_server: LocalNats, namespace: str, tmp_path: Path
) -> None:
    maria, ca_file = tls_maria
    shutil.copy(ca_file, tmp_path / "ca.crt")
    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)
    url = maria.url.replace("@127.0.0.1:", "@localhost:")  # the name the certificate has
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "TLS_MY_URL": url}
    stack = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    try:
        done = run_export(stack, config, "secure", timeout_s=120)
    finally:
        stack.stop()
    # the server refuses plaintext: every session of the run was TLS
    assert done.status == events_pb2.RUN_STATUS_SUCCEEDED, done.error_message
    assert done.total_rows == ROWS and done.manifest_parts == 3


def test_each_mode_connects_or_fails_for_good_saying_why(
    tls_maria: tuple[LocalMariaDB, Path], tmp_path: Path
) -> None:
    maria, ca_file = tls_maria
    by_name = maria.url.replace("@127.0.0.1:", "@localhost:")
    good = {"sslmode": "verify-full", "sslrootcert": str(ca_file)}
    assert _count_and_read(by_name, **good) == (ROWS, ROWS)
    # by address: the CA signs it (verify-ca passes), but it does not name 127.0.0.1
    assert _count_and_read(maria.url, sslmode="verify-ca", sslrootcert=str(ca_file)) == (
        ROWS,
        ROWS,
    )
    with pytest.raises(SourceError) as wrong_name:
        _count_and_read(maria.url, **good)
    assert "tls_unverified" in str(wrong_name.value) and not wrong_name.value.retryable
    assert _count_and_read(maria.url, sslmode="require") == (ROWS, ROWS)

    # a server certificate from a CA the source does not trust: permanent, and at once (the
    # metadata session meets it before any reader pool would wait out its timeout)
    other = write_ca(trustme.CA(), tmp_path / "other-ca.crt")
    began = time.monotonic()
    with pytest.raises(SourceError) as untrusted:
        _count_and_read(maria.url, sslmode="verify-full", sslrootcert=str(other))
    assert time.monotonic() - began < 10
    assert "tls_unverified" in str(untrusted.value) and not untrusted.value.retryable
    # plaintext: the server refuses it
    with pytest.raises(SourceError) as plaintext:
        _count_and_read(maria.url, sslmode="disable")
    assert not plaintext.value.retryable
    for exc in (untrusted.value, wrong_name.value, plaintext.value):
        assert PASSWORD not in str(exc)
