"""No secret leaves where it is kept. A stack secured as deployed (a PostgreSQL source with a
password, bearer tokens, TLS on both gRPC APIs, NATS over TLS with one user per service) runs an
export and refuses a near-miss token. Then everything it wrote, sent or answered is scanned for
every secret it held: the stream (messages and nats-server's files), the service logs, the
DuckDB read model, the parts and manifests, the traces received by an OTLP collector, every
/metrics page, and the gRPC answers, the refusal included."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from sluiceway.cli.client import Endpoints
from sluiceway.cli.client import connect as connect_api
from sluiceway.client import SluicewayError, config_file
from sluiceway.common import crash
from sluiceway.common.bus import Bus, Names, connect
from sluiceway.v1 import events_pb2
from tests.support.certs import Issued
from tests.support.eventually import eventually
from tests.support.faults import chunked_pg_config
from tests.support.localpg import PASSWORD, LocalPostgres
from tests.support.otlp import OtlpReceiver
from tests.support.securenats import SecuredStack

pytestmark = pytest.mark.integration

TABLE = "leak_src"
ROWS = 20_000
URL_ENV = "LEAK_PG_URL"


@pytest.fixture(scope="module")
def leak_source(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(
        f"DROP TABLE IF EXISTS {TABLE};"
        f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, label text);"
        f"INSERT INTO {TABLE} SELECT g, 'label ' || g FROM generate_series(1, {ROWS}) g;"
    )
    return pg


def _key_material(files: Issued) -> list[bytes]:
    """Each base64 line of a PEM private key: any of them in the open is a leak."""
    lines = files.key_file.read_bytes().splitlines()
    return [line for line in lines if line and not line.startswith(b"-----")]


def _files(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[Path, bytes]:
    out = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not any(path.is_relative_to(s) for s in skip):
                out[path] = path.read_bytes()
    return out


def _metrics(state_dir: Path) -> dict[str, bytes]:
    """Every service's /metrics page, scraped over HTTP."""
    pages = {}
    for ready in sorted((state_dir / "run").glob("*.json")):
        addr = json.loads(ready.read_text()).get("metrics_addr")
        if addr:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
                pages[ready.stem] = response.read()
    return pages


async def test_no_secret_reaches_anything_the_stack_wrote_sent_or_answered(
    leak_source: LocalPostgres, namespace: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != crash.ENV}
    env.update(
        {
            URL_ENV: leak_source.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0",
        }
    )
    dest = tmp_path / "dest"
    (tmp_path / "leaks.yaml").write_text(chunked_pg_config("leaks", TABLE, 5_000, dest, URL_ENV))
    secured = await asyncio.to_thread(SecuredStack, tmp_path / "stack", namespace, env, 2)
    stack = secured.stack
    token = stack.token()
    near_miss = token[:-1] + ("A" if token[-1] != "A" else "B")
    answers: list[bytes] = []
    try:
        with connect_api(secured.endpoints()) as client:
            run_id = client.submit(config_file(tmp_path / "leaks.yaml", "leaks")).run_id
            done = await asyncio.to_thread(client.wait, run_id, timeout_s=120)
            assert done.status == events_pb2.RUN_STATUS_SUCCEEDED, done.error_message
            answers += [
                client.get(run_id).SerializeToString(),
                client.list_runs().SerializeToString(),
                client.list_chunks(run_id).SerializeToString(),
                client.list_parts(run_id).SerializeToString(),
                *(e.SerializeToString() for e in client.iter_events(run_id)),
            ]
        ep = secured.endpoints()
        wrong = Endpoints(ep.control_addr, ep.tracker_addr, token=near_miss, ca_file=ep.ca_file)
        with connect_api(wrong) as intruder, pytest.raises(SluicewayError) as refused:
            intruder.get(run_id)
        assert refused.value.code.name == "UNAUTHENTICATED"
        answers.append(str(refused.value).encode())

        nc = await connect(
            secured.nats.url, name="leak-scan", connect_timeout_s=10, options=secured.nats.options()
        )
        try:
            bus = Bus(nc, Names(namespace))
            stream = [m.data for m in await _all(bus)]
        finally:
            await nc.drain()
        assert len(stream) > 10
        await eventually(
            lambda: any(s.name == "commit run" for s in receiver.spans),
            timeout_s=30,
            what="the run's trace reached the collector",
        )
        metrics = _metrics(Path(stack.state.state_dir))
        assert {"planner-1", "tracker-1", "worker-1", "committer-1"} <= set(metrics)
        assert b"sluiceway_auth_denied_total" in metrics["tracker-1"]  # the refusal is counted
    finally:
        await asyncio.to_thread(secured.stop)

    work = tmp_path / "stack"
    written = _files(
        work / "state",
        work / "nats" / "store",
        dest,
        skip=(work / "state" / "auth",),  # the token file and the principals' digests
    )
    assert any(p.suffix == ".duckdb" for p in written)
    assert any(p.name == "manifest.json" for p in written)
    assert any(p.suffix == ".log" for p in written)
    everything = {
        **{str(p): data for p, data in written.items()},
        **{f"answer {i}": a for i, a in enumerate(answers)},
        **{f"stream message {i}": m for i, m in enumerate(stream)},
        **{f"OTLP export {i}": r for i, r in enumerate(receiver.raw)},
        **{f"/metrics of {inst}": page for inst, page in metrics.items()},
    }
    secrets = {
        "the source password": PASSWORD.encode(),
        "the source URL": leak_source.url.encode(),
        "the API token": token.encode(),
        "the refused token": near_miss.encode(),
        **{f"NATS password of {u}": p.encode() for u, p in secured.nats.passwords.items()},
        **{f"API TLS key line {i}": line for i, line in enumerate(_key_material(secured.api_tls))},
        **{
            f"NATS TLS key line {i}": line for i, line in enumerate(_key_material(secured.nats.tls))
        },
    }
    found = [
        f"{what} in {where}"
        for where, data in everything.items()
        for what, secret in secrets.items()
        if secret in data
    ]
    assert not found, found


async def _all(bus: Bus) -> list[Msg]:
    return [m async for m in bus.iter_messages(bus.names.runs_all)]
