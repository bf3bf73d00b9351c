"""The SDK over TLS: a server with a certificate from a test CA answers a client that trusts the
CA, and refuses a plaintext client and one that trusts another CA (both Unavailable)."""

from __future__ import annotations

import grpc
import pytest
import trustme

from sluiceway.client import AsyncClient, ClientOptions, Unavailable
from tests.support.fakegrpc import RUN_ID, run_events, serve


def server_credentials(ca: trustme.CA) -> grpc.ServerCredentials:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return grpc.ssl_server_credentials([(cert.private_key_pem.bytes(), chain)])


def trusting(ca: trustme.CA) -> ClientOptions:
    roots = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    return ClientOptions(timeout_s=5, credentials=roots)


async def test_tls_with_a_trusted_ca_works_and_anything_else_is_refused() -> None:
    ca = trustme.CA()
    async with serve(run_events(4), credentials=server_credentials(ca)) as served:
        async with AsyncClient(tracker=served.addr, options=trusting(ca)) as client:
            assert (await client.get(RUN_ID)).run_id == RUN_ID
            assert [e.seq async for e in client.watch(RUN_ID)] == [2, 5, 8, 11]

        for options in (ClientOptions(timeout_s=5), trusting(trustme.CA())):
            async with AsyncClient(tracker=served.addr, options=options) as client:
                with pytest.raises(Unavailable):
                    await client.get(RUN_ID)
    assert served.tracker.unary_calls == 1  # only the trusted client's call got through
