"""Compare MySQL/MariaDB -> Arrow readers on a bench-like table: rows/s, peak RSS, streaming.

    .venv/bin/python bench/mysql_readers.py --rows 1000000

Starts a throwaway MariaDB server (tests/support/localmaria.py), loads `bench` (bigint id, int,
varchar, decimal(12,2), JSON, datetime(6)), then runs each reader in its own child process so
that peak RSS (ru_maxrss of the child) is the reader's alone. `--url` (mysql://...) reuses an
existing database instead. `mariadb_cli` is the raw reference: the server's own client reading
every row (`--quick`: unbuffered) as text into /dev/null, no conversion at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the bench and tests packages beside it

from bench.readers import compare  # noqa: E402

QUERY = "SELECT id, qty, name, price, attrs, created_at FROM bench"
READERS = (
    "baseline",
    "mariadb_cli",
    "pymysql_unbuffered",
    "asyncmy_unbuffered",
    "connectorx_arrow",
    "connectorx_stream",
)
BATCH = 65_536


def load(sql_admin: callable, rows: int) -> None:  # type: ignore[valid-type]
    sql_admin(
        "DROP TABLE IF EXISTS bench; "
        "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name varchar(64), "
        "price decimal(12,2), attrs json, created_at datetime(6)); "
        "INSERT INTO bench SELECT seq, seq % 1000, CONCAT('name-', seq), (seq % 100000) / 100, "
        "JSON_OBJECT('k', seq % 7, 'tag', CONCAT('x', seq % 13)), "
        "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND "
        f"FROM seq_1_to_{rows}; ANALYZE TABLE bench;"
    )


def _parts(url: str) -> dict[str, object]:
    u = urlsplit(url)
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 3306,
        "user": unquote(u.username or ""),
        "password": unquote(u.password or ""),
        "database": u.path.lstrip("/"),
    }


def _columns(rows: list[tuple[object, ...]]) -> int:
    """What every row reader must do at least: turn rows into Arrow columns."""
    import pyarrow as pa

    cols = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(c) for c in cols], names=[str(i) for i in range(len(cols))]
    ).num_rows


# ---- readers: each returns (rows, streamed?) ------------------------------------------------


def r_baseline(url: str) -> tuple[int, bool]:
    import pyarrow  # noqa: F401  (the import cost every reader pays)

    return 0, True


def r_mariadb_cli(url: str) -> tuple[int, bool]:
    p = _parts(url)
    env = {**os.environ, "MYSQL_PWD": str(p["password"])}
    args = ["mariadb", "--no-defaults", "-h", str(p["host"]), "-P", str(p["port"])]
    args += ["-u", str(p["user"]), "-D", str(p["database"]), "--quick", "--batch", "--raw"]
    args += ["--skip-column-names", "-e", QUERY]
    with subprocess.Popen(args, stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
    return rows, True


def r_pymysql_unbuffered(url: str) -> tuple[int, bool]:
    import pymysql
    import pymysql.cursors

    p = _parts(url)
    con = pymysql.connect(**p, cursorclass=pymysql.cursors.SSCursor)  # type: ignore[arg-type]
    rows = 0
    with con.cursor() as cur:
        cur.execute(QUERY)
        while batch := cur.fetchmany(BATCH):
            rows += _columns(batch)
    con.close()
    return rows, True


def r_asyncmy_unbuffered(url: str) -> tuple[int, bool]:
    import asyncio

    import asyncmy
    from asyncmy.cursors import SSCursor

    async def run() -> int:
        p = _parts(url)
        p["db"] = p.pop("database")
        con = await asyncmy.connect(**p)
        rows = 0
        async with con.cursor(cursor=SSCursor) as cur:
            await cur.execute(QUERY)
            while batch := await cur.fetchmany(BATCH):
                rows += _columns(batch)
        con.close()
        return rows

    return asyncio.run(run()), True


def r_connectorx_arrow(url: str) -> tuple[int, bool]:
    import connectorx as cx

    table = cx.read_sql(url, QUERY, return_type="arrow")
    return table.num_rows, False


def r_connectorx_stream(url: str) -> tuple[int, bool]:
    import connectorx as cx

    reader = cx.read_sql(url, QUERY, return_type="arrow_stream", batch_size=BATCH)
    rows = 0
    for batch in reader:
        rows += batch.num_rows
    return rows, True


def main() -> None:
    from tests.support.localmaria import LocalMariaDB

    compare(
        __file__,
        READERS,
        lambda name: globals()[f"r_{name}"],
        default_rows=1_000_000,
        start=lambda: LocalMariaDB().start(),
        load=lambda server, rows: load(server.sql_admin, rows),
    )


if __name__ == "__main__":
    main()
