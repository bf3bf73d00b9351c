"""`plan -o` and `apply` through the CLI against a real stack (SQLite and PostgreSQL,
incremental exports):
a fresh plan applies exactly its sealed range; a tampered plan is refused even with --force; a
stale plan and one whose cursor moved are refused, and apply with --force (recorded in the
run's apply_context); a schema that drifted after planning fails the pinned run."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import cli
from tests.support.localpg import PASSWORD, LocalPostgres

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
"""
EXPORT = """
  - name: {name}
    source: {source}
    table: {table}
    mode: incremental
    cursor_column: id
    destination: out
"""
SOURCES = {
    "sqlite": "{engine: sqlite, path: events.db}",
    "postgres": "{engine: postgres, url_env: PLAN_APPLY_PG_URL}",
}
URL_ENV = "PLAN_APPLY_PG_URL"


class Db:
    """The source database of one variant: insert rows, run DDL."""

    def __init__(self, engine: str, path: Path, pg: LocalPostgres | None) -> None:
        self.engine, self.path, self.pg = engine, path, pg

    def execute(self, sql: str) -> None:
        if self.pg is not None:
            self.pg.psql_admin(sql)
            return
        con = sqlite3.connect(self.path)
        con.executescript(sql)
        con.commit()
        con.close()

    def insert(self, table: str, ids: range) -> None:
        self.execute(
            f"INSERT INTO {table} VALUES " + ", ".join(f"({i}, 'event {i}')" for i in ids) + ";"
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    engine = request.param
    root = tmp_path_factory.mktemp(f"plan_apply_{engine}")
    pg: LocalPostgres | None = request.getfixturevalue("pg") if engine == "postgres" else None
    db = Db(engine, root / "events.db", pg)
    for table in ("events", "drifty"):
        key = "bigint" if pg is not None else "INTEGER"
        db.execute(
            f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id {key} PRIMARY KEY, name TEXT);"
        )
    db.insert("events", range(1, 301))
    db.insert("drifty", range(1, 51))
    cfg = root / "exports.yaml"
    names = [("fresh", "events"), ("stale", "events"), ("moved", "events"), ("drift", "drifty")]
    cfg.write_text(
        CONFIG + "".join(EXPORT.format(name=n, table=t, source=SOURCES[engine]) for n, t in names)
    )
    sd = ["--state-dir", str(root / "state")]
    saved = os.environ.get(URL_ENV)
    if pg is not None:  # the CLI and the stack it starts read the URL from this variable
        os.environ[URL_ENV] = pg.url
    up = cli("up", "--detach", "--workers", "2", *sd)
    assert up.returncode == 0, up.stderr
    try:
        yield {"root": root, "db": db, "cfg": cfg, "sd": sd, "engine": engine}
    finally:
        down = cli("down", *sd, timeout=60)
        if saved is None:
            os.environ.pop(URL_ENV, None)
        else:
            os.environ[URL_ENV] = saved
        assert down.returncode == 0, down.stderr


def _plan(env: dict[str, Any], export: str, *extra: str) -> tuple[Path, dict[str, Any]]:
    out = env["root"] / f"{export}-{time.monotonic_ns()}.plan.json"
    res = cli("plan", "-c", str(env["cfg"]), "--export", export, "-o", str(out), *extra, *env["sd"])
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert f"sealed plan {doc['plan_id']} written to {out}" in res.stdout
    return out, doc


def _apply(env: dict[str, Any], path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    res = cli("apply", str(path), "--json", *extra, *env["sd"], timeout=180)
    summary = json.loads(res.stdout) if res.returncode != 1 or res.stdout.strip() else {}
    return res.returncode, summary, res.stderr


def test_a_fresh_plan_applies_exactly_its_sealed_range(env: dict[str, Any]) -> None:
    path, doc = _plan(env, "fresh")
    assert doc["cursor"] == {"column": "id", "low": "", "high": "300"}
    if env["engine"] == "sqlite":
        assert doc["spec"]["source"] == {"engine": "sqlite", "path": str(env["root"] / "events.db")}
    else:  # the variable's name, never the URL with its password
        assert doc["spec"]["source"] == {"engine": "postgres", "url_env": URL_ENV}
        assert PASSWORD not in env["root"].joinpath(path.name).read_text()
    env["db"].insert("events", range(301, 306))  # arrive after planning: the next run's
    code, summary, err = _apply(env, path)
    assert code == 0, err
    assert summary["status"] == "RUN_STATUS_SUCCEEDED"
    assert int(summary["total_rows"]) == 300
    assert summary["plan_id"] == doc["plan_id"]
    assert summary["apply_context"] == {"plan_id": doc["plan_id"]}  # force false, nothing bypassed


def test_a_tampered_plan_is_refused_even_with_force(env: dict[str, Any]) -> None:
    path, doc = _plan(env, "stale")
    doc["cursor"]["high"] = "999999"
    path.write_text(json.dumps(doc))
    for extra in ((), ("--force",)):
        code, _, err = _apply(env, path, *extra)
        assert code == 1
        assert err.count("\n") == 1 and err.startswith("refused (tampered): "), err
    path.write_bytes(b"\x00garbage")
    code, _, err = _apply(env, path, "--force")
    assert code == 1 and err.count("\n") == 1


def test_a_stale_plan_is_refused_and_applies_with_force(env: dict[str, Any]) -> None:
    path, doc = _plan(env, "stale", "--expires-in", "1s")
    expires = datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.05)  # until the plan's own expiry has passed
    code, _, err = _apply(env, path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("refused (stale): "), err
    code, summary, err = _apply(env, path, "--force")
    assert code == 0, err
    assert summary["apply_context"] == {
        "plan_id": doc["plan_id"],
        "force": True,
        "bypassed": ["stale"],
    }
    assert int(summary["total_rows"]) == int(doc["cursor"]["high"])


def test_a_plan_whose_cursor_moved_is_refused_and_applies_from_the_current_cursor_with_force(
    env: dict[str, Any],
) -> None:
    path, doc = _plan(env, "moved")
    low_then = doc["cursor"]["high"]
    run = cli("run", "-c", str(env["cfg"]), "--export", "moved", "--wait", "--json", *env["sd"])
    assert run.returncode == 0, run.stderr  # another run commits: the cursor moves
    code, _, err = _apply(env, path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("refused (cursor_moved): "), err
    assert f"now after {low_then}" in err
    env["db"].insert("events", range(1001, 1011))
    code, summary, err = _apply(env, path, "--force")
    assert code == 0, err
    # forced: the sealed plan re-based on the current cursor (nothing exported twice, the
    # cursor never goes back); the run's own plan_id says so
    assert int(summary["total_rows"]) == 10
    assert summary["plan_id"] != doc["plan_id"]
    assert summary["apply_context"] == {
        "plan_id": doc["plan_id"],
        "force": True,
        "bypassed": ["cursor_moved"],
    }


def test_a_schema_that_drifted_after_planning_fails_the_pinned_run(env: dict[str, Any]) -> None:
    path, doc = _plan(env, "drift")
    env["db"].execute("ALTER TABLE drifty ADD COLUMN note TEXT;")
    # neither stale nor moved: the CLI submits; the planner re-plans, the plan id differs and
    # the run fails at planning (exit 1) before anything is read; --force changes nothing
    for extra in ((), ("--force",)):
        code, summary, err = _apply(env, path, *extra)
        assert code == 1, err
        assert summary["status"] == "RUN_STATUS_FAILED"
        assert summary["failure_cause"] == "planning"
        assert f"the source changed since plan {doc['plan_id']}" in summary["error_message"]
        assert summary["apply_context"]["plan_id"] == doc["plan_id"]
        assert int(summary.get("total_rows", 0)) == 0
