"""An export into an S3-compatible object store (a real SeaweedFS server), through a real stack
(`sluiceway up`, `run --wait`, `down`), read back from the store: the manifest's parts match
the objects byte for byte, _SUCCESS holds the manifest's xxh3, no temporary object is left,
`sluiceway validate s3://...` passes and then catches an overwritten part, and the credentials
appear nowhere in what the stack persisted (the event streams, the logs) or wrote."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import xxhash

from sluiceway.cli.stack import start_stack
from sluiceway.common import crash
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import terminal_run, wait_sigkilled
from tests.support.s3server import LocalS3

pytestmark = pytest.mark.integration

BUCKET = "sluiceway-test"
CONFIG = """
version: 1
exports:
  - name: items
    source: {{engine: sqlite, path: small.db}}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 700
    destination: s3://{bucket}/{prefix}
    quality:
      unique_columns: [id]
      null_ratio_max: {{name: 0.0}}
  - name: too_many
    source: {{engine: sqlite, path: small.db}}
    table: items
    destination: s3://{bucket}/{prefix}
    quality:
      row_count_max: 2999
"""


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluiceway.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _xxh3(data: bytes) -> str:
    return f"xxh3:{xxhash.xxh3_64_hexdigest(data)}"


def _read(fs: pafs.FileSystem, key: str) -> bytes:
    with fs.open_input_stream(key) as f:
        return bytes(f.read())


def _all_keys(fs: pafs.FileSystem, prefix: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_an_export_to_s3_is_committed_verifiable_and_keeps_no_secret(
    tmp_path: Path, s3_server: LocalS3
) -> None:
    con = sqlite3.connect(tmp_path / "small.db")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
    con.executemany(
        "INSERT INTO items VALUES (?,?,?)", [(i, f"item {i}", i * 1.5) for i in range(1, 3001)]
    )
    con.commit()
    con.close()
    prefix = "exports/" + uuid.uuid4().hex[:8]
    config = tmp_path / "s3.yaml"
    config.write_text(CONFIG.format(bucket=BUCKET, prefix=prefix))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICEWAY_", "AWS_"))}
    env = {**base, **s3_server.env}
    sd = ["--state-dir", str(tmp_path / "state")]

    up = cli(env, "up", "--detach", "--workers", "2", *sd)
    assert up.returncode == 0, up.stderr
    try:
        run = cli(env, "run", "-c", str(config), "--export", "items", "--wait", "--json", *sd)
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        assert summary["status"] == "RUN_STATUS_SUCCEEDED", summary
        run_id = summary["run_id"]
        events = cli(env, "events", run_id, *sd)
        assert events.returncode == 0, events.stderr
        # the quality gate reads the parts from the store (a pyarrow dataset): it counts 3000
        gated = cli(env, "run", "-c", str(config), "--export", "too_many", "--wait", "--json", *sd)
        failed = json.loads(gated.stdout)
        assert failed["status"] == "RUN_STATUS_FAILED", failed
        assert "3000" in failed["error_message"], failed
    finally:
        down = cli(env, "down", *sd, timeout=60)
        assert down.returncode == 0, down.stderr

    fs = s3_server.filesystem()
    run_key = f"{BUCKET}/{prefix}/items/runs/{run_id}"
    manifest_bytes = _read(fs, f"{run_key}/manifest.json")
    manifest = json.loads(manifest_bytes)
    assert manifest["run_id"] == run_id and manifest["row_count"] == 3000
    assert manifest["part_count"] == len(manifest["parts"]) == 5  # 3000 rows / 700 a chunk
    for part in manifest["parts"]:
        data = _read(fs, f"{run_key}/{part['path']}")
        assert len(data) == part["size_bytes"]
        assert _xxh3(data) == part["content_fingerprint"]
    with fs.open_input_file(f"{run_key}/{manifest['parts'][0]['path']}") as f:
        assert pq.ParquetFile(f).metadata.num_rows == manifest["parts"][0]["rows"]
    assert _read(fs, f"{run_key}/_SUCCESS").decode() == _xxh3(manifest_bytes)
    assert json.loads(_read(fs, f"{BUCKET}/{prefix}/items/manifest.json"))["run_id"] == run_id

    keys = _all_keys(fs, f"{BUCKET}/{prefix}")
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], keys
    assert not [k for k in keys if "/_quarantine/" in k], keys
    assert len([k for k in keys if k.startswith(run_key + "/part-")]) == 5

    # validate straight from the store: the run, its manifest, and the latest pointer
    for target in (
        f"s3://{run_key}",
        f"s3://{run_key}/manifest.json",
        f"s3://{BUCKET}/{prefix}/items",
    ):
        ok = cli(env, "validate", target, "--json", timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["passed"] is True
    # without credentials it cannot even look: exit 1, not a verdict on the data
    assert (
        cli(
            base | {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "AWS_EC2_METADATA_DISABLED": "true"},
            "validate",
            f"s3://{run_key}",
        ).returncode
        == 1
    )

    # one part overwritten (same size, other bytes): exit 3, the part named
    victim = manifest["parts"][1]
    original = _read(fs, f"{run_key}/{victim['path']}")
    with fs.open_output_stream(f"{run_key}/{victim['path']}") as out:
        out.write(original[:-9] + b"X" * 9)
    bad = cli(env, "validate", f"s3://{run_key}", "--json", timeout=60)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    assert report["passed"] is False
    assert {f["part"] for f in report["failures"]} == {victim["path"]}

    # no secret anywhere: the run's events, everything the stack persisted (JetStream files,
    # logs, state), the objects written
    secrets = [s3_server.access_key.encode(), s3_server.secret_key.encode()]
    assert run_id in events.stdout
    for secret in secrets:
        assert secret.decode() not in events.stdout + run.stdout
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not [s for s in secrets if s in blob], path
    for key in keys:
        blob = _read(fs, key)
        assert not [s for s in secrets if s in blob], key


BIG_CONFIG = """
version: 1
exports:
  - name: big
    source: {{engine: sqlite, path: {db}}}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    compression: none
    destination: s3://{bucket}/{prefix}
"""
BIG_ROWS = 600_000  # two chunks, each part ~22 MB of incompressible text: several MiB blocks


async def test_a_worker_killed_mid_upload_leaves_no_torn_object_and_the_run_completes(
    tmp_path: Path, s3_server: LocalS3, nats_server: LocalNats, namespace: str
) -> None:
    db = tmp_path / "big.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, token TEXT NOT NULL)")
    con.execute(
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?) "
        "INSERT INTO items SELECT x, hex(randomblob(32)) FROM g",
        (BIG_ROWS,),
    )
    con.commit()
    con.close()
    prefix = "crash/" + uuid.uuid4().hex[:8]
    text = BIG_CONFIG.format(db=db, chunk_size=BIG_ROWS // 2, bucket=BUCKET, prefix=prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICEWAY_", "AWS_"))}
    env.update(s3_server.env)
    env.update(
        {
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_WORKER_ACK_WAIT_S": "4",
            "SLUICEWAY_WORKER_HEARTBEAT_S": "1",
            "SLUICEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "state",
        workers=1,
        nats_url=nats_server.url,
        env=env,
        instance_env={"worker-1": {crash.ENV: "worker.mid_upload"}},
    )
    control_ch = stack.channel(stack.state.control_addr)
    tracker_ch = stack.channel(stack.state.tracker_addr)
    try:
        reply = await control_pb2_grpc.ControlStub(control_ch).SubmitRun(
            control_pb2.SubmitRunRequest(
                config=control_pb2.ConfigDocument(text=text, base_dir=str(tmp_path))
            ),
            timeout=30,
        )
        run_id = reply.run_id
        worker = stack.procs["worker-1"]
        log = next(p.log for p in stack.state.processes if p.name == "worker-1")
        await asyncio.to_thread(wait_sigkilled, worker, 120, log)
        await asyncio.to_thread(stack.restart, "worker-1", drop_env=(crash.ENV,))
        run = await eventually(
            lambda: terminal_run(tracker_pb2_grpc.TrackerStub(tracker_ch), run_id),
            timeout_s=180,
            interval_s=0.2,
            what="the run ends",
        )
        assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    finally:
        await control_ch.close()
        await tracker_ch.close()
        await asyncio.to_thread(stack.stop)

    fs = s3_server.filesystem()
    run_key = f"{BUCKET}/{prefix}/big/runs/{run_id}"
    manifest_bytes = _read(fs, f"{run_key}/manifest.json")
    manifest = json.loads(manifest_bytes)
    assert manifest["row_count"] == BIG_ROWS and manifest["part_count"] == 2
    for part in manifest["parts"]:
        data = _read(fs, f"{run_key}/{part['path']}")
        assert len(data) == part["size_bytes"] and _xxh3(data) == part["content_fingerprint"]
        assert len(data) > 4 << 20  # the upload that was cut short spanned several blocks
    assert _read(fs, f"{run_key}/_SUCCESS").decode() == _xxh3(manifest_bytes)
    # the attempt killed mid-upload left no object behind, whole or torn, under any name
    assert {p["attempt"] for p in manifest["parts"]} == {1, 2}, manifest["parts"]
    killed = next(p for p in manifest["parts"] if p["attempt"] == 2)
    torn = killed["path"].replace("-a2.", "-a1.")
    keys = _all_keys(fs, f"{BUCKET}/{prefix}")
    assert not [k for k in keys if k.endswith("/" + torn)], keys
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], keys
    listed = {f"{run_key}/{p['path']}" for p in manifest["parts"]}
    assert {k for k in keys if k.startswith(run_key + "/part-")} == listed
    # and every row arrived once
    ids: list[int] = []
    for key in sorted(listed):
        with fs.open_input_file(key) as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(1, BIG_ROWS + 1))
    # nor on the worker's disk: the killed upload's spool file went with its process
    assert list((tmp_path / "spool").iterdir()) == []
