"""TLS on a real grpc.aio server (sluiceway.common.tlsfiles): trusted clients are served and others
refused; certificate files replaced on disk (rename or Kubernetes symlink swap) are presented to
new connections without a restart, a half-written replacement is not; with a client CA, the
client certificate's subject is the caller's identity. Loopback only, port 0."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from sluiceway.common.tlsfiles import (
    ServerTlsFiles,
    TlsError,
    client_credentials,
    peer_identity,
)
from tests.support.certs import (
    Issued,
    SecretVolume,
    chain_pem,
    client_cert,
    der_of,
    presented_certificate,
    replace_file,
    replace_leaf,
    server_cert,
    write_ca,
    write_leaf,
)

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
WHO = "/sluiceway.test.Who/Identity"


@dataclass
class Served:
    address: str
    identities: list[str | None] = field(default_factory=list)  # of every Identity call


@asynccontextmanager
async def serving(credentials: grpc.ServerCredentials | None) -> AsyncIterator[Served]:
    """The health service and an Identity method answering the caller's identity and address, on
    TLS (or plaintext if `credentials` is None)."""
    server = grpc.aio.server()
    served = Served("")

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        identity = peer_identity(context)
        served.identities.append(identity)
        return json.dumps({"identity": identity, "peer": context.peer()}).encode()

    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "sluiceway.test.Who", {"Identity": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    served.address = f"127.0.0.1:{port}"
    await server.start()
    try:
        yield served
    finally:
        await server.stop(None)


def channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def health(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    async with channel(address, credentials) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


async def who_am_i(address: str, credentials: grpc.ChannelCredentials | None) -> str | None:
    async with channel(address, credentials) as ch:
        reply = json.loads(await ch.unary_unary(WHO)(b"", timeout=5))
    identity: str | None = reply["identity"]
    return identity


async def refused(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    code: grpc.StatusCode = failed.value.code()
    return code


async def presented(address: str, ca_file: Path) -> bytes:
    # the probe blocks on its socket; the server runs on this loop
    return await asyncio.to_thread(presented_certificate, address, ca_file)


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    ca_file: Path
    server: Issued

    def files(self, client_ca_file: Path | None = None) -> ServerTlsFiles:
        return ServerTlsFiles(
            str(self.server.cert_file),
            str(self.server.key_file),
            str(client_ca_file) if client_ca_file else "",
        )

    def trusting(self) -> grpc.ChannelCredentials:
        return client_credentials(ca_file=str(self.ca_file))

    def as_client(self, client: Issued) -> grpc.ChannelCredentials:
        return client_credentials(str(self.ca_file), str(client.cert_file), str(client.key_file))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    return Pki(ca, write_ca(ca, tmp_path / "ca.crt"), write_leaf(server_cert(ca), tmp_path / "srv"))


async def test_a_client_trusting_the_ca_is_served_and_plaintext_or_another_ca_is_unavailable(
    pki: Pki, tmp_path: Path
) -> None:
    other_ca = client_credentials(ca_file=str(write_ca(trustme.CA(), tmp_path / "other.crt")))
    async with serving(pki.files().credentials()) as served:
        assert await health(served.address, pki.trusting()) == SERVING
        assert await refused(health(served.address, None)) == grpc.StatusCode.UNAVAILABLE
        assert await refused(health(served.address, other_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_replaced_files_are_presented_to_new_connections_while_an_open_one_goes_on(
    pki: Pki,
) -> None:
    async with (
        serving(pki.files().credentials()) as served,
        channel(served.address, pki.trusting()) as open_channel,
    ):
        before = json.loads(await open_channel.unary_unary(WHO)(b"", timeout=5))
        assert await presented(served.address, pki.ca_file) == pki.server.der

        renewed = replace_leaf(pki.server, server_cert(pki.ca))

        assert renewed.der != pki.server.der
        assert await presented(served.address, pki.ca_file) == renewed.der
        assert await health(served.address, pki.trusting()) == SERVING
        after = json.loads(await open_channel.unary_unary(WHO)(b"", timeout=5))
        assert after["peer"] == before["peer"]  # the same TCP connection, still served


async def test_a_kubernetes_secret_volume_swap_is_presented_to_new_connections(
    pki: Pki, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secret")
    first = volume.publish_leaf(server_cert(pki.ca))
    files = ServerTlsFiles(str(first.cert_file), str(first.key_file))
    async with serving(files.credentials()) as served:
        assert await presented(served.address, pki.ca_file) == first.der

        second = volume.publish_leaf(server_cert(pki.ca))

        assert (tmp_path / "secret" / "tls.crt").is_symlink()
        assert await presented(served.address, pki.ca_file) == second.der
        assert await health(served.address, pki.trusting()) == SERVING


async def test_a_half_written_replacement_keeps_the_last_good_certificate_until_it_is_whole(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sluiceway.common.tlsfiles")
    renewed = server_cert(pki.ca)
    new_chain, new_key = chain_pem(renewed), renewed.private_key_pem.bytes()
    cert_file, key_file = pki.server.cert_file, pki.server.key_file
    async with serving(pki.files().credentials()) as served:
        replace_file(cert_file, new_chain[: len(new_chain) // 2])
        assert await presented(served.address, pki.ca_file) == pki.server.der
        assert f"SLUICEWAY_TLS_CERT_FILE={cert_file}: incomplete PEM certificate" in caplog.text

        replace_file(cert_file, new_chain)  # the key is still the old one
        assert await presented(served.address, pki.ca_file) == pki.server.der
        assert f"SLUICEWAY_TLS_KEY_FILE={key_file}: does not match the certificate" in caplog.text
        assert await health(served.address, pki.trusting()) == SERVING

        replace_file(key_file, new_key)
        assert await presented(served.address, pki.ca_file) == der_of(renewed)

    assert len(caplog.records) == 2  # each unusable state once, not once per handshake
    assert "PRIVATE KEY" not in caplog.text and "CERTIFICATE-----" not in caplog.text


async def test_with_a_client_ca_the_client_certificate_subject_is_the_callers_identity(
    pki: Pki, tmp_path: Path
) -> None:
    clients = trustme.CA()
    alice = write_leaf(client_cert(clients, "alice", "payments"), tmp_path / "alice")
    files = pki.files(client_ca_file=write_ca(clients, tmp_path / "clients.crt"))
    async with serving(files.credentials()) as served:
        assert (
            await who_am_i(served.address, pki.as_client(alice)) == "CN=alice,OU=clients,O=payments"
        )
        assert await health(served.address, pki.as_client(alice)) == SERVING


async def test_with_a_client_ca_a_client_without_a_certificate_or_from_another_ca_is_unavailable(
    pki: Pki, tmp_path: Path
) -> None:
    files = pki.files(client_ca_file=write_ca(trustme.CA(), tmp_path / "clients.crt"))
    # signed by the server's CA, which the client CA file does not hold
    mallory = write_leaf(client_cert(pki.ca, "mallory", "payments"), tmp_path / "mallory")
    async with serving(files.credentials()) as served:
        for credentials in (pki.trusting(), pki.as_client(mallory)):
            code = await refused(who_am_i(served.address, credentials))
            assert code == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call is made
    assert served.identities == []


async def test_without_a_client_certificate_there_is_no_identity(pki: Pki) -> None:
    async with serving(pki.files().credentials()) as served:
        assert await who_am_i(served.address, pki.trusting()) is None
    async with serving(None) as served:
        assert await who_am_i(served.address, None) is None
    assert served.identities == [None]


async def test_a_replaced_client_ca_admits_its_clients_on_new_connections(
    pki: Pki, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    clients_file = write_ca(old_ca, tmp_path / "clients.crt")
    old = write_leaf(client_cert(old_ca, "old", "payments"), tmp_path / "old")
    new = write_leaf(client_cert(new_ca, "new", "payments"), tmp_path / "new")
    async with serving(pki.files(client_ca_file=clients_file).credentials()) as served:
        assert await who_am_i(served.address, pki.as_client(old)) == "CN=old,OU=clients,O=payments"

        replace_file(clients_file, new_ca.cert_pem.bytes())

        assert await who_am_i(served.address, pki.as_client(new)) == "CN=new,OU=clients,O=payments"
        code = await refused(who_am_i(served.address, pki.as_client(old)))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_a_missing_empty_or_mismatched_file_is_a_tls_error_naming_it(
    pki: Pki, tmp_path: Path
) -> None:
    cert, key = str(pki.server.cert_file), str(pki.server.key_file)
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(
        TlsError, match=re.escape(f"SLUICEWAY_TLS_CERT_FILE={missing}: no such file")
    ):
        ServerTlsFiles(missing, key).credentials()

    other_key = str(write_leaf(server_cert(pki.ca), tmp_path / "other").key_file)
    with pytest.raises(TlsError) as mismatch:
        ServerTlsFiles(cert, other_key).credentials()
    assert str(mismatch.value) == (
        f"SLUICEWAY_TLS_KEY_FILE={other_key}: does not match the certificate of "
        f"SLUICEWAY_TLS_CERT_FILE={cert}"
    )

    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")
    with pytest.raises(TlsError, match=re.escape(f"SLUICEWAY_TLS_CLIENT_CA_FILE={empty}: empty")):
        ServerTlsFiles(cert, key, str(empty)).credentials()
    with pytest.raises(TlsError, match=re.escape(f"SLUICEWAY_TLS_KEY_FILE={cert}: no PEM private")):
        ServerTlsFiles(cert, cert).credentials()

    with pytest.raises(TlsError, match=re.escape(f"ca_file={missing}: no such file")):
        client_credentials(ca_file=missing)
    with pytest.raises(TlsError, match=re.escape(f"cert_file={cert}: key_file is needed")):
        client_credentials(cert_file=cert)
    with pytest.raises(TlsError, match=re.escape(f"key_file={other_key}: does not match")):
        client_credentials(str(pki.ca_file), cert, other_key)
