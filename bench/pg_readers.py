"""Compare PostgreSQL -> Arrow readers on a bench-like table: rows/s, peak RSS, streaming.

    .venv/bin/python bench/pg_readers.py --rows 1500000

Starts a throwaway cluster (tests/support/localpg.py), loads `bench` (bigint id, int, text,
numeric(12,2), jsonb, timestamptz), then runs each reader in its own child process so that peak
RSS (ru_maxrss of the child) is the reader's alone. `--url` reuses an existing database instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the bench and tests packages beside it

from bench.readers import compare  # noqa: E402

QUERY = "SELECT id, qty, name, price, attrs, created_at FROM bench"
READERS = (
    "baseline",
    "psycopg_copy_binary",
    "adbc_stream",
    "adbc_stream_params",
    "adbc_stream_guc",
    "connectorx_arrow",
    "connectorx_stream",
    "duckdb_postgres",
)


def load(url_admin: callable, rows: int) -> None:  # type: ignore[valid-type]
    url_admin(
        "DROP TABLE IF EXISTS bench; "
        "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name text, price numeric(12,2), "
        "attrs jsonb, created_at timestamptz); "
        f"INSERT INTO bench SELECT g, g % 1000, 'name-' || g, (g % 100000) / 100.0, "
        "jsonb_build_object('k', g % 7, 'tag', 'x' || (g % 13)), "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
        f"FROM generate_series(1, {rows}) g; ANALYZE bench;"
    )


# ---- readers: each returns (rows, streamed?) ------------------------------------------------


def r_baseline(url: str) -> tuple[int, bool]:
    import pyarrow  # noqa: F401  (the import cost every reader pays)

    return 0, True


def r_psycopg_copy_binary(url: str) -> tuple[int, bool]:
    import psycopg

    n_bytes = 0
    with psycopg.connect(url) as con, con.cursor() as cur:
        with cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT binary)") as copy:
            for block in copy:
                n_bytes += len(block)
        rows = con.execute("SELECT count(*) FROM bench").fetchone()[0]  # raw bytes: no decode
    return rows, True


def r_adbc_stream(url: str) -> tuple[int, bool]:
    import adbc_driver_postgresql.dbapi as pgdb

    rows = 0
    with pgdb.connect(url) as con, con.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)})
        cur.execute(QUERY)
        reader = cur.fetch_record_batch()
        for batch in reader:
            rows += batch.num_rows
    return rows, True


def r_adbc_stream_params(url: str) -> tuple[int, bool]:
    """The worker's query shape: the key range bound as parameters ($1, $2), not formatted."""
    import adbc_driver_postgresql.dbapi as pgdb

    rows = 0
    with pgdb.connect(url) as con, con.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)})
        cur.execute(QUERY + " WHERE id >= $1 AND id < $2", (0, 1 << 62))
        for batch in cur.fetch_record_batch():
            rows += batch.num_rows
    # a bound query is run as a prepared statement, not COPY: the whole result set is
    # materialised before the first batch (peak RSS grows with the range)
    return rows, False


def r_adbc_stream_guc(url: str) -> tuple[int, bool]:
    """What the worker does: the range bound as parameters of set_config() in the chunk's
    transaction, and the streamed (COPY) query reading them with current_setting()."""
    import adbc_driver_postgresql.dbapi as pgdb

    rows = 0
    with pgdb.connect(url, autocommit=True) as con, con.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)})
        cur.execute("BEGIN READ ONLY")
        cur.execute(
            "SELECT set_config('sluiceway.k1', $1, true), set_config('sluiceway.k2', $2, true)",
            ("0", str(1 << 62)),
        )
        cur.fetchall()
        cur.execute(
            QUERY + " WHERE id >= current_setting('sluiceway.k1')::bigint"
            " AND id < current_setting('sluiceway.k2')::bigint"
        )
        for batch in cur.fetch_record_batch():
            rows += batch.num_rows
        cur.execute("COMMIT")
    return rows, True


def r_connectorx_arrow(url: str) -> tuple[int, bool]:
    import connectorx as cx

    table = cx.read_sql(url, QUERY, return_type="arrow")
    return table.num_rows, False


def r_connectorx_stream(url: str) -> tuple[int, bool]:
    import connectorx as cx

    reader = cx.read_sql(url, QUERY, return_type="arrow_stream", batch_size=65536)
    rows = 0
    for batch in reader:
        rows += batch.num_rows
    return rows, True


def r_duckdb_postgres(url: str) -> tuple[int, bool]:
    import duckdb

    con = duckdb.connect()
    con.execute("INSTALL postgres; LOAD postgres;")  # needs the extension; fails offline
    con.execute(f"ATTACH '{url}' AS pg (TYPE postgres, READ_ONLY)")
    reader = con.execute(QUERY.replace("bench", "pg.public.bench")).fetch_record_batch(65536)
    rows = sum(b.num_rows for b in reader)
    return rows, True


def main() -> None:
    from tests.support.localpg import LocalPostgres

    compare(
        __file__,
        READERS,
        lambda name: globals()[f"r_{name}"],
        default_rows=1_500_000,
        start=lambda: LocalPostgres().start(),
        load=lambda server, rows: load(server.psql_admin, rows),
    )


if __name__ == "__main__":
    main()
