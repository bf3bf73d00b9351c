"""`sluiceway doctor` and `sluiceway init` as a person runs them, against a real PostgreSQL
cluster and real SQLite files: an unreachable host, a wrong password (never printed), a table
the user may not read, an unknown table, an unwritable destination; a config written by
`init` that `doctor` finds ready and that loads as written."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sluiceway.common.config import load_file
from tests.support.localmaria import PASSWORD as MARIA_PASSWORD
from tests.support.localmaria import LocalMariaDB
from tests.support.localpg import PASSWORD, LocalPostgres

pytestmark = pytest.mark.integration

ROWS = 1_200_000  # above init's chunking threshold
READER, READER_PW = "doc_reader", "Rd-7731-pw-secret"
NOSEL, NOSEL_PW = "doc_nosel", "Ns-5519-pw-secret"
WRONG_PW = "Wrong-Pw-0042-never-printed"
SECRETS = (PASSWORD, READER_PW, NOSEL_PW, WRONG_PW)


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Exit code and stdout+stderr of the real CLI in a fresh process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    out = subprocess.run(
        [sys.executable, "-m", "sluiceway.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
        cwd=cwd,
    )
    return out.returncode, out.stdout + out.stderr


def assert_clean(text: str) -> None:
    """No traceback and no password in anything the CLI printed."""
    assert "Traceback" not in text, text
    for secret in SECRETS:
        assert secret not in text, f"a password was printed:\n{text}"


@pytest.fixture(scope="module")
def tables(pg: LocalPostgres) -> Iterator[dict[str, str]]:
    """A large table with an integer key, a small keyless one, a reader role and a role with
    no SELECT on them; URLs by role."""
    pg.psql_admin(
        f"DROP TABLE IF EXISTS doc_big, doc_small; DROP ROLE IF EXISTS {READER};"
        f"DROP ROLE IF EXISTS {NOSEL};"
        "CREATE TABLE doc_big (id bigint PRIMARY KEY, name text, amount numeric(12,2));"
        f"INSERT INTO doc_big SELECT g, 'n' || g, g / 100.0 FROM generate_series(1, {ROWS}) g;"
        "CREATE TABLE doc_small (code text, qty int);"
        "INSERT INTO doc_small VALUES ('a', 1), ('b', 2);"
        "ANALYZE doc_big; ANALYZE doc_small;"
        f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PW}';"
        f"GRANT SELECT ON doc_big, doc_small TO {READER};"
        f"CREATE ROLE {NOSEL} LOGIN PASSWORD '{NOSEL_PW}';"
    )

    def url(role: str, pw: str, port: int = pg.port) -> str:
        return f"postgresql://{role}:{pw}@127.0.0.1:{port}/{pg.database}"

    with __import__("socket").socket() as held:  # bound, never listening: refused
        held.bind(("127.0.0.1", 0))
        yield {
            "reader": url(READER, READER_PW),
            "nosel": url(NOSEL, NOSEL_PW),
            "wrong": url(READER, WRONG_PW),
            "unreachable": url(READER, READER_PW, held.getsockname()[1]),
        }
    pg.psql_admin(f"DROP TABLE doc_big, doc_small; DROP ROLE {READER}; DROP ROLE {NOSEL};")


def pg_config(tmp_path: Path, table: str = "public.doc_big", dest: str = "out") -> Path:
    cfg = tmp_path / "pg.yaml"
    cfg.write_text(
        "version: 1\n"
        "sources:\n  shop: {engine: postgres, url_env: DOC_DB_URL}\n"
        f"exports:\n  - {{name: big, source: shop, table: {table}, destination: {dest}}}\n"
    )
    return cfg


def test_init_writes_a_chunked_config_for_a_large_keyed_table_and_doctor_finds_it_ready(
    tmp_path: Path, tables: dict[str, str]
) -> None:
    env = {"DOC_DB_URL": tables["reader"]}
    out = tmp_path / "big.yaml"
    code, text = cli(
        "init", "--table", "public.doc_big", "--source-env", "DOC_DB_URL", "-o", str(out), env=env
    )
    assert code == 0, text
    assert_clean(text + out.read_text())
    doc = yaml.safe_load(out.read_text())
    assert doc["sources"]["main"] == {"engine": "postgres", "url_env": "DOC_DB_URL"}
    (export,) = doc["exports"]
    assert export["mode"] == "chunked" and export["chunk_column"] == "id"
    assert 100_000 <= export["chunk_size"] <= ROWS // 4  # several chunks for the workers
    spec = load_file(out, env=env)["doc_big"]  # loads as written
    assert spec.table == "public.doc_big" and spec.mode == "chunked"

    code, text = cli("doctor", "-c", str(out), "--state-dir", str(tmp_path / "st"), env=env)
    assert_clean(text)
    assert "source       ok    public.doc_big readable via $DOC_DB_URL (3 columns)" in text
    assert "destination  ok" in text and "verdict: ready" in text
    # no stack is running here: the export is ready, the stack is not (exit 2)
    assert "FAIL  no stack is running" in text and code == 2, text


def test_init_chooses_full_for_a_small_keyless_table_and_refuses_an_unknown_one(
    tmp_path: Path, tables: dict[str, str]
) -> None:
    env = {"DOC_DB_URL": tables["reader"]}
    code, text = cli(
        "init", "--table", "doc_small", "--source-env", "DOC_DB_URL", "-o", "-", env=env
    )
    assert code == 0, text
    assert yaml.safe_load(text)["exports"][0]["mode"] == "full"

    code, text = cli(
        "init", "--table", "public.nope", "--source-env", "DOC_DB_URL", "-o", "-", env=env
    )
    assert code == 1 and text.count("\n") == 1, text
    assert text.startswith("error: --table: no table public.nope in the database of $DOC_DB_URL")
    assert_clean(text)

    code, text = cli("init", "--table", "doc_small", "--source-env", "UNSET_VAR_X", "-o", "-")
    assert code == 1 and "environment variable UNSET_VAR_X is not set" in text, text


@pytest.mark.parametrize(
    ("role", "expected", "where"),
    [
        ("unreachable", "cannot reach the database server named in $DOC_DB_URL", "source.url_env"),
        ("wrong", "the server refused the password in $DOC_DB_URL", "source.url_env"),
        ("nosel", "the user of $DOC_DB_URL may not read public.doc_big", "table"),
    ],
)
def test_doctor_names_the_variable_and_the_problem_never_the_secret(
    tmp_path: Path, tables: dict[str, str], role: str, expected: str, where: str
) -> None:
    cfg = pg_config(tmp_path)
    code, text = cli(
        "doctor", "-c", str(cfg), "--state-dir", str(tmp_path), env={"DOC_DB_URL": tables[role]}
    )
    assert code == 1, text
    assert_clean(text)
    source = next(line for line in text.splitlines() if line.strip().startswith("source"))
    assert f"{cfg}: export 'big': field '{where}': {expected}" in source, source
    assert "verdict: NOT READY (source)" in text

    # init meets the same problem with the same words, naming its flag
    code, text = cli(
        "init", "--table", "public.doc_big", "--source-env", "DOC_DB_URL", "-o", "-",
        env={"DOC_DB_URL": tables[role]},
    )  # fmt: skip
    assert code == 1 and expected in text and text.count("\n") == 1, text
    assert_clean(text)


def test_doctor_reports_each_export_on_its_own(tmp_path: Path, tables: dict[str, str]) -> None:
    """An unknown table, an unwritable destination and an unset variable each fail only
    their export; the good one is ready."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    cfg = tmp_path / "many.yaml"
    cfg.write_text(
        "version: 1\n"
        "sources:\n  shop: {engine: postgres, url_env: DOC_DB_URL}\n"
        "defaults: {destination: out}\n"
        "exports:\n"
        "  - {name: good, source: shop, table: doc_small}\n"
        "  - {name: missing, source: shop, table: public.not_there}\n"
        f"  - {{name: nowhere, source: shop, table: doc_small, destination: {blocked}/x}}\n"
        "  - {name: unset, source: {engine: postgres, url_env: DOC_OTHER_URL}, table: doc_small}\n"
    )
    code, text = cli(
        "doctor", "-c", str(cfg), "--state-dir", str(tmp_path), env={"DOC_DB_URL": tables["reader"]}
    )
    assert code == 1, text
    assert_clean(text)
    blocks = {b.split("\n", 1)[0]: b for b in re.split(r"^export ", text, flags=re.M)[1:]}
    assert "verdict: ready" in blocks["'good'"]
    assert (
        "field 'table': no table public.not_there in the database of $DOC_DB_URL"
        in (blocks["'missing'"])
    )
    assert "field 'destination': cannot write to" in blocks["'nowhere'"]
    assert (
        "field 'source.url_env': environment variable DOC_OTHER_URL is not set"
        in (blocks["'unset'"])
    )


def test_doctor_and_init_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    con.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 1.5) for i in range(1, 501)])
    con.commit()
    con.close()
    out = tmp_path / "orders.yaml"
    code, text = cli("init", "--table", "orders", "--sqlite", str(db), "-o", str(out))
    assert code == 0, text
    assert yaml.safe_load(out.read_text())["exports"][0]["mode"] == "full"  # 500 rows
    code, text = cli("doctor", "-c", str(out), "--state-dir", str(tmp_path / "st"))
    assert "orders readable via" in text and "verdict: ready" in text and code == 2, text

    code, text = cli("init", "--table", "nope", "--sqlite", str(db), "-o", "-")
    assert code == 1 and text.startswith(f"error: --table: no table nope in {db}"), text
    code, text = cli("init", "--table", "orders", "--sqlite", str(db), "-o", str(out))
    assert code == 1 and "exists (--force to overwrite it)" in text, text


def test_doctor_finds_a_sqlite_path_that_is_not_a_readable_database(tmp_path: Path) -> None:
    """SQLite has no per-user privileges (PostgreSQL's case is above): what a user meets is a
    path that is missing, or is not a database."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, only text " * 100)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "version: 1\nexports:\n"
        f"  - {{name: g, source: {{engine: sqlite, path: {garbage}}}, table: t, destination: o}}\n"
    )
    code, text = cli("doctor", "-c", str(cfg), "--state-dir", str(tmp_path))
    assert code == 1, text
    assert f"export 'g': field 'source.path': cannot read {garbage} as a SQLite database" in text
    assert_clean(text)
    garbage.unlink()
    code, text = cli("doctor", "-c", str(cfg), "--state-dir", str(tmp_path))
    assert code == 1, text
    assert f"export 'g': field 'source.path': no such database file: {garbage}" in text, text


def test_init_writes_a_mysql_source_for_a_mysql_url_and_doctor_finds_it_ready(
    tmp_path: Path, maria: LocalMariaDB
) -> None:
    maria.sql_admin(
        "DROP TABLE IF EXISTS init_big;"
        "CREATE TABLE init_big (id bigint PRIMARY KEY, name varchar(20));"
        f"INSERT INTO init_big SELECT seq, CONCAT('n', seq) FROM seq_1_to_{ROWS};"
        "ANALYZE TABLE init_big;"
    )
    env = {"MY_DB_URL": maria.url}
    out = tmp_path / "my.yaml"
    code, text = cli(
        "init", "--table", "init_big", "--source-env", "MY_DB_URL", "-o", str(out), env=env
    )
    assert code == 0, text
    assert MARIA_PASSWORD not in text + out.read_text()
    doc = yaml.safe_load(out.read_text())
    assert doc["sources"]["main"] == {"engine": "mysql", "url_env": "MY_DB_URL"}
    (export,) = doc["exports"]
    assert export["mode"] == "chunked" and export["chunk_column"] == "id", out.read_text()
    code, text = cli("doctor", "-c", str(out), "--state-dir", str(tmp_path / "st"), env=env)
    assert MARIA_PASSWORD not in text
    assert "init_big readable via $MY_DB_URL (2 columns)" in text and "verdict: ready" in text, text
