"""Who may do what, on a real stack: principals from a principals file, each seeing only the
runs it may see in every Tracker RPC, in CancelRun and in the CLI; refused credentials; token
rotation without a restart; and the same rules in a tracker rebuilt from the stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.client import (
    Client,
    ClientOptions,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    config_file,
    with_token,
)
from sluiceway.common.localnats import LocalNats
from sluiceway.common.principals import new_token, token_digest
from sluiceway.common.tlsfiles import client_credentials
from sluiceway.v1 import control_pb2, control_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from tests.support.certs import (
    Issued,
    client_cert,
    presented_certificate,
    replace_file,
    replace_leaf,
    server_cert,
    write_ca,
    write_leaf,
)
from tests.support.faults import fresh_tracker, read_model
from tests.support.sqlitedb import items_db

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
  - name: items
    source: {engine: sqlite, path: items.db}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 500
    destination: out
"""

# name -> (role, teams)
PEOPLE = {
    "alice": ("operator", ["payments"]),
    "anna": ("operator", ["payments"]),
    "bob": ("operator", ["search"]),
    "rita": ("reader", ["payments"]),
    "root": ("admin", []),
}


def principals_doc(tokens: dict[str, list[str]], revoked: frozenset[str] = frozenset()) -> str:
    entries = []
    for name, (role, teams) in PEOPLE.items():
        entries.append(
            {
                "name": name,
                "role": role,
                "teams": teams,
                "tokens": [
                    {"sha256": token_digest(t), **({"revoked": True} if t in revoked else {})}
                    for t in tokens[name]
                ],
            }
        )
    return yaml.safe_dump({"principals": entries})


class Env:
    def __init__(self, stack: Stack, tmp: Path, tokens: dict[str, list[str]]) -> None:
        self.stack, self.tmp, self.tokens = stack, tmp, tokens
        self.principals_file = tmp / "auth" / "principals.yaml"
        self.config = tmp / "exports.yaml"

    def client(self, token: str) -> Client:
        options = with_token(ClientOptions(timeout_s=15), token)
        return Client(self.stack.state.control_addr, self.stack.state.tracker_addr, options)

    def as_(self, name: str) -> Client:
        return self.client(self.tokens[name][0])


@pytest.fixture(scope="module")
def env(nats_server: LocalNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("auth")
    items_db(tmp / "items.db", 2_000)
    (tmp / "exports.yaml").write_text(CONFIG)
    tokens = {name: [new_token()] for name in PEOPLE}
    (tmp / "auth").mkdir()
    (tmp / "auth" / "principals.yaml").write_text(principals_doc(tokens))
    stack_env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": "auth" + os.urandom(4).hex(),
        "SLUICEWAY_AUTH_PRINCIPALS_FILE": str(tmp / "auth" / "principals.yaml"),
        "SLUICEWAY_METRICS_ADDR": "127.0.0.1:0",
    }
    stack = start_stack(tmp / "state", workers=1, nats_url=nats_server.url, env=stack_env)
    try:
        yield Env(stack, tmp, tokens)
    finally:
        stack.stop()


def codes(env: Env, who: str, run_id: str) -> dict[str, str]:
    """The answer of every run-scoped Tracker RPC and of CancelRun for `who`: 'ok' or a code."""
    out: dict[str, str] = {}
    token = env.tokens[who][0]
    auth = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(env.stack.state.tracker_addr) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        calls: dict[str, Any] = {
            "GetRun": lambda: stub.GetRun(tracker_pb2.GetRunRequest(run_id=run_id), metadata=auth),
            "ListChunks": lambda: stub.ListChunks(
                tracker_pb2.ListChunksRequest(run_id=run_id), metadata=auth
            ),
            "ListParts": lambda: stub.ListParts(
                tracker_pb2.ListPartsRequest(run_id=run_id), metadata=auth
            ),
            "GetRunEvents": lambda: stub.GetRunEvents(
                tracker_pb2.GetRunEventsRequest(run_id=run_id), metadata=auth
            ),
            "WatchRun": lambda: list(
                stub.WatchRun(tracker_pb2.WatchRunRequest(run_id=run_id), metadata=auth)
            ),
        }
        for name, call in calls.items():
            try:
                call()
                out[name] = "ok"
            except grpc.RpcError as exc:
                out[name] = exc.code().name
    with grpc.insecure_channel(env.stack.state.control_addr) as channel:
        try:
            control_pb2_grpc.ControlStub(channel).CancelRun(
                control_pb2.CancelRunRequest(run_id=run_id), metadata=auth
            )
            out["CancelRun"] = "ok"
        except grpc.RpcError as exc:
            out["CancelRun"] = exc.code().name
    return out


def listed(env: Env, who: str) -> set[str]:
    with env.as_(who) as client:
        return {r.run_id for r in client.iter_runs()}


def test_each_principal_sees_only_the_runs_it_may_and_another_ones_run_does_not_exist(
    env: Env,
) -> None:
    with env.as_("alice") as client:
        submitted = client.submit(config_file(env.config, "items"), requested_by="mallory")
        alices = submitted.run_id
        done = client.wait(alices, timeout_s=120)
    assert done.owner == "alice" and done.team == "payments"
    with env.as_("bob") as client:
        bobs = client.submit(config_file(env.config, "items")).run_id
        client.wait(bobs, timeout_s=120)

    # the run is alice's: the label the client sent is not who asked
    with env.as_("alice") as client:
        requested = next(iter(client.iter_events(alices))).event.run_requested
    assert (requested.requested_by, requested.owner, requested.team) == (
        "alice",
        "alice",
        "payments",
    )

    assert alices in listed(env, "alice") and bobs not in listed(env, "alice")
    assert bobs in listed(env, "bob") and alices not in listed(env, "bob")
    assert alices in listed(env, "anna") and bobs not in listed(env, "anna")  # her team's
    assert {alices, bobs} <= listed(env, "root")
    assert listed(env, "rita") & {alices, bobs} == set()  # a reader sees its own runs only

    hidden = {m: "NOT_FOUND" for m in ("GetRun", "ListChunks", "ListParts", "GetRunEvents")}
    hidden |= {"WatchRun": "NOT_FOUND", "CancelRun": "NOT_FOUND"}
    assert codes(env, "bob", alices) == hidden
    assert codes(env, "alice", bobs) == hidden
    assert codes(env, "rita", bobs) == hidden
    # a team-mate sees alice's run but may not cancel it (the run ended: cancel is checked
    # before the run's state, so the answer is about who, not when)
    readable = {m: "ok" for m in ("GetRun", "ListChunks", "ListParts", "GetRunEvents")}
    assert codes(env, "anna", alices) == readable | {
        "WatchRun": "ok",
        "CancelRun": "PERMISSION_DENIED",
    }
    # an admin reads and may cancel anything (this one has ended: FAILED_PRECONDITION)
    assert codes(env, "root", bobs) == readable | {
        "WatchRun": "ok",
        "CancelRun": "FAILED_PRECONDITION",
    }

    # a hidden run answers exactly like a run that does not exist
    with env.as_("bob") as client, pytest.raises(NotFound) as hidden_run:
        client.get(alices)
    with env.as_("bob") as client, pytest.raises(NotFound) as no_run:
        client.get("20261206T000000Z-00000000")
    assert str(hidden_run.value).replace(alices, "X") == str(no_run.value).replace(
        "20261206T000000Z-00000000", "X"
    )

    # a tracker rebuilt from the stream alone applies the same rules: ownership is in the log
    last = max(e.seq for e in env.as_("root").iter_events(bobs))
    with fresh_tracker(
        env.tmp / "rebuilt", env.stack.envs["tracker-1"], env.stack.state.nats_url
    ) as addr:
        assert (read_model_owner(addr, alices, last, env.tokens["alice"][0])) == "alice"
        with grpc.insecure_channel(addr) as channel, pytest.raises(grpc.RpcError) as refused:
            tracker_pb2_grpc.TrackerStub(channel).GetRun(
                tracker_pb2.GetRunRequest(run_id=alices),
                metadata=(("authorization", f"Bearer {env.tokens['bob'][0]}"),),
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def read_model_owner(addr: str, run_id: str, min_seq: int, token: str) -> str:
    model = asyncio.run(read_model(addr, run_id, min_seq, 60, token))
    return model.run.owner


def test_an_operator_cancels_its_own_run_and_not_another_teams_and_an_admin_cancels_any(
    env: Env,
) -> None:
    cfg = env.tmp / "slow.yaml"
    cfg.write_text(CONFIG.replace("chunk_size: 500", "chunk_size: 5"))  # 400 chunks
    with env.as_("bob") as bob, env.as_("alice") as alice, env.as_("root") as root:
        b1 = bob.submit(config_file(cfg, "items")).run_id
        with pytest.raises(NotFound):
            alice.cancel(b1)
        root.cancel(b1, reason="admin")
        b2 = bob.submit(config_file(cfg, "items")).run_id
        bob.cancel(b2)
        assert bob.wait(b1, timeout_s=120).status == bob.wait(b2, timeout_s=120).status
        canceled = next(e for e in bob.iter_events(b1) if e.kind == "cancel_requested")
    # the audit trail: who canceled is a fact of the log
    assert canceled.event.cancel_requested.requested_by == "root"


def test_a_reader_may_not_submit_and_the_refusal_is_counted(env: Env) -> None:
    with env.as_("rita") as client, pytest.raises(PermissionDenied, match="reader 'rita'"):
        client.submit(config_file(env.config, "items"))
    ready = json.loads((Path(env.stack.state.state_dir) / "run" / "planner-1.json").read_text())
    with urllib.request.urlopen(f"http://{ready['metrics_addr']}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'sluiceway_auth_denied_total{method="SubmitRun",reason="role"}' in metrics


# ---- refused credentials, property-generated -------------------------------------------------

TRACKER_CALLS = ["GetRun", "ListRuns", "ListChunks", "ListParts", "GetRunEvents", "WatchRun"]


def _header_values(env_tokens: dict[str, list[str]]) -> st.SearchStrategy[tuple[str, str] | None]:
    known = [t for ts in env_tokens.values() for t in ts]
    near = st.sampled_from(known).flatmap(
        lambda t: st.sampled_from([t[:-1], t + "x", t.upper(), t[1:], t[::-1]])
    )
    token = st.one_of(
        st.text(min_size=1, max_size=200),
        st.from_regex(r"slw_[A-Za-z0-9_-]{43}", fullmatch=True),
        near,
    )
    header = st.one_of(
        token.map(lambda t: f"Bearer {t}"),
        token.map(lambda t: f"Basic {t}"),
        token,
        st.just("Bearer "),
    )
    # metadata values must be printable ASCII (gRPC refuses the call otherwise, client side)
    printable = header.filter(lambda h: h.isascii() and h.isprintable() and h.strip() == h)
    return st.one_of(st.none(), printable.map(lambda h: ("authorization", h)))


def test_a_thousand_bad_credentials_are_refused_unauthenticated_and_nothing_breaks(
    env: Env,
) -> None:
    tracker = grpc.insecure_channel(env.stack.state.tracker_addr)
    control = grpc.insecure_channel(env.stack.state.control_addr)
    tstub, cstub = tracker_pb2_grpc.TrackerStub(tracker), control_pb2_grpc.ControlStub(control)
    seen: dict[str, int] = {}

    @settings(
        max_examples=1000,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(_header_values(env.tokens), st.sampled_from([*TRACKER_CALLS, "SubmitRun", "CancelRun"]))
    def refused(header: tuple[str, str] | None, method: str) -> None:
        metadata = (header,) if header is not None else ()
        run_id = "20261206T000000Z-00000000"
        try:
            if method == "SubmitRun":
                cstub.SubmitRun(control_pb2.SubmitRunRequest(), metadata=metadata, timeout=10)
            elif method == "CancelRun":
                cstub.CancelRun(
                    control_pb2.CancelRunRequest(run_id=run_id), metadata=metadata, timeout=10
                )
            elif method == "ListRuns":
                tstub.ListRuns(tracker_pb2.ListRunsRequest(), metadata=metadata, timeout=10)
            elif method == "WatchRun":
                list(
                    tstub.WatchRun(
                        tracker_pb2.WatchRunRequest(run_id=run_id), metadata=metadata, timeout=10
                    )
                )
            else:
                request = getattr(tracker_pb2, f"{method}Request")(run_id=run_id)
                getattr(tstub, method)(request, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, (method, header, exc.details())
            for tokens in env.tokens.values():
                assert not any(t in (exc.details() or "") for t in tokens)
            seen[method] = seen.get(method, 0) + 1
        else:
            raise AssertionError(f"{method} answered with {header!r}")

    try:
        refused()
        # the servers still serve a valid caller afterwards
        with env.as_("root") as client:
            client.list_runs()
    finally:
        tracker.close()
        control.close()
    assert sum(seen.values()) >= 1000 and set(seen) == {*TRACKER_CALLS, "SubmitRun", "CancelRun"}


def test_health_and_reflection_answer_without_a_credential(env: Env) -> None:
    for addr in (env.stack.state.control_addr, env.stack.state.tracker_addr):
        with grpc.insecure_channel(addr) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING


# ---- rotation ---------------------------------------------------------------------------------


def test_a_new_token_works_and_a_revoked_one_stops_working_without_a_restart(env: Env) -> None:
    pids = [p.pid for p in env.stack.state.processes]
    old, fresh = env.tokens["bob"][0], new_token()
    rotated = {**env.tokens, "bob": [old, fresh]}
    replace_file(env.principals_file, principals_doc(rotated).encode())
    with env.client(fresh) as client:
        client.list_runs()  # the next request reads the new file
    replace_file(env.principals_file, principals_doc(rotated, revoked=frozenset({old})).encode())
    with env.client(old) as client, pytest.raises(Unauthenticated, match="revoked"):
        client.list_runs()
    with env.client(fresh) as client:
        client.list_runs()
    # a file that does not parse keeps the last good one
    replace_file(env.principals_file, b"principals: [")
    with env.client(fresh) as client:
        client.list_runs()
    replace_file(env.principals_file, principals_doc(env.tokens).encode())
    assert [p.pid for p in env.stack.state.processes] == pids
    assert all(p.poll() is None for p in env.stack.procs.values())


# ---- the CLI ----------------------------------------------------------------------------------


def test_the_cli_lists_only_the_callers_runs(env: Env) -> None:
    with env.as_("bob") as client:
        bobs = client.submit(config_file(env.config, "items")).run_id
        client.wait(bobs, timeout_s=120)

    def runs_as(name: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sluiceway.cli.main",
                "runs",
                "--limit",
                "100",
                "--control",
                env.stack.state.control_addr,
                "--tracker",
                env.stack.state.tracker_addr,
            ],
            env={**os.environ, "SLUICEWAY_TOKEN": env.tokens[name][0]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert bobs in runs_as("bob") and bobs not in runs_as("alice")
    denied = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluiceway.cli.main",
            "status",
            bobs,
            "--control",
            env.stack.state.control_addr,
            "--tracker",
            env.stack.state.tracker_addr,
        ],
        env={**os.environ, "SLUICEWAY_TOKEN": env.tokens["alice"][0]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert denied.returncode == 1 and "NOT_FOUND" in denied.stderr
    assert env.tokens["alice"][0] not in denied.stderr + denied.stdout


# ---- TLS and mutual TLS on the stack ----------------------------------------------------------


def test_over_mutual_tls_the_certificate_is_the_principal_and_a_rotated_one_needs_no_restart(
    nats_server: LocalNats, tmp_path: Path
) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.crt")
    served = write_leaf(server_cert(ca), tmp_path / "tls")
    carol = write_leaf(client_cert(ca, "carol", "payments"), tmp_path / "carol", "client")
    mallory = write_leaf(client_cert(ca, "mallory", "payments"), tmp_path / "mallory", "client")
    stranger = write_leaf(client_cert(other_ca, "carol", "payments"), tmp_path / "x", "client")
    principals = tmp_path / "principals.yaml"
    principals.write_text(
        yaml.safe_dump(
            {
                "principals": [
                    {
                        "name": "carol",
                        "role": "operator",
                        "teams": ["payments"],
                        "subjects": ["CN=carol,OU=clients,O=payments"],
                    }
                ]
            }
        )
    )
    stack_env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": "tls" + os.urandom(4).hex(),
        "SLUICEWAY_AUTH_PRINCIPALS_FILE": str(principals),
        "SLUICEWAY_TLS_CERT_FILE": str(served.cert_file),
        "SLUICEWAY_TLS_KEY_FILE": str(served.key_file),
        "SLUICEWAY_TLS_CLIENT_CA_FILE": str(ca_file),
        "SLUICEWAY_HEALTH_ADDR": "127.0.0.1:0",
    }
    stack = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=stack_env)
    try:

        def client(leaf: Issued, trust: Path = ca_file) -> Client:
            creds = client_credentials(str(trust), str(leaf.cert_file), str(leaf.key_file))
            options = ClientOptions(timeout_s=15, credentials=creds)
            return Client(stack.state.control_addr, stack.state.tracker_addr, options)

        items_db(tmp_path / "items.db", 2_000)
        cfg = tmp_path / "exports.yaml"
        cfg.write_text(CONFIG)
        with client(carol) as c:
            run_id = c.submit(config_file(cfg, "items")).run_id
            assert c.wait(run_id, timeout_s=120).owner == "carol"
        with client(mallory) as c, pytest.raises(Unauthenticated, match="not a known principal"):
            c.list_runs()
        # a certificate of another CA never gets past the TLS handshake: nothing is served
        with client(stranger) as c, pytest.raises(Unavailable):
            c.list_runs()

        # probes: a plaintext health-only port beside the mutual-TLS API (a kubelet's gRPC
        # probe speaks no TLS), and nothing else on it
        for inst in ("planner-1", "tracker-1"):
            ready = json.loads((tmp_path / "state" / "run" / f"{inst}.json").read_text())
            with grpc.insecure_channel(ready["health_addr"]) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.RpcError) as elsewhere:
                    tracker_pb2_grpc.TrackerStub(channel).ListRuns(
                        tracker_pb2.ListRunsRequest(), timeout=10
                    )
                assert elsewhere.value.code() == grpc.StatusCode.UNIMPLEMENTED

        pids = [p.pid for p in stack.state.processes]
        before = presented_certificate(stack.state.tracker_addr, ca_file)
        assert before == served.der
        rotated = replace_leaf(served, server_cert(ca))
        for addr in (stack.state.tracker_addr, stack.state.control_addr):
            assert presented_certificate(addr, ca_file) == rotated.der != before
        with client(carol) as c:
            assert run_id in {r.run_id for r in c.iter_runs()}
        assert [p.pid for p in stack.state.processes] == pids
    finally:
        stack.stop()
