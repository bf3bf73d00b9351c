"""The benchmark's table shapes: `bench`, `wide` (long text, jsonb, arrays) and `uuid`."""

from __future__ import annotations

import sys

import psycopg

# per text column: its type, and whether its values are random hex (pglz cannot compress
# them, so they move out of line into TOAST; zstd halves them) or a phrase repeated to length
# (compressed inline by PostgreSQL, ~20x by zstd): a mix, as real wide rows are
WIDE_TEXT = [("text" if c % 3 else "varchar(2000)", c % 2 == 1) for c in range(1, 13)]
PRIMES = (7919, 104729, 1299709, 15485863, 179424673, 31, 131, 1031, 10007, 100003, 1000003)


def log(msg: str) -> None:
    print(f"[shapes] {msg}", file=sys.stderr, flush=True)


def _length(c: int) -> str:
    # 100..2,000 bytes, varying by row and by column
    return f"(100 + ((g * {PRIMES[c % len(PRIMES)]} + {c * 37}) % 1901))::int"


def _wide_value(c: int, hexed: bool) -> str:
    n = _length(c)
    if hexed:
        return (
            f"left((SELECT string_agg(md5((g * 16 + {c})::text || ':' || i), '')"
            f" FROM generate_series(1, ({n} + 31) / 32) AS i), {n})"
        )
    phrase = f"'w' || (g % 97) || ' ' || md5(g::text || 'c{c}') || ' lorem ' || (g % 13) || ' '"
    value = f"left(repeat({phrase}, {n} / 40 + 1), {n})"
    return f"CASE WHEN g % 11 = 0 THEN NULL ELSE {value} END" if c == 12 else value


def create_wide(url: str, rows: int) -> None:
    """`wide`: id bigint primary key, twelve 100-2,000-byte text/varchar columns, jsonb, int[]
    and text[], generated server-side from generate_series (deterministic)."""
    cols = ", ".join(f"c{c:02d} {t}" for c, (t, _) in enumerate(WIDE_TEXT, 1))
    values = ",\n".join(_wide_value(c, hexed) for c, (_, hexed) in enumerate(WIDE_TEXT, 1))
    # no bind parameters: the SQL is ours and `rows` an int, so `%` stays a modulo
    sql = f"""
        INSERT INTO wide
        SELECT g, {values},
               jsonb_build_object(
                   'k', g % 100, 'name', 'n-' || md5(g::text), 'ok', g % 2 = 0,
                   'tags', jsonb_build_array(g % 7, g % 11, 'x' || (g % 13)),
                   'nested', jsonb_build_object('a', g, 'b', (g % 1000) / 10.0)),
               ARRAY(SELECT ((g * i) % 10000)::int FROM generate_series(1, 1 + g % 16) AS i),
               ARRAY['t' || (g % 13), 'u' || (g % 29), left(md5(g::text), 8)]
        FROM generate_series(1::bigint, {int(rows)}::bigint) AS g"""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS wide")
        con.execute(
            f"CREATE TABLE wide (id bigint NOT NULL, {cols}, doc jsonb, nums int[], tags text[])"
        )
        con.execute(sql)
        # the key is built after the load: one sorted build instead of row-by-row inserts
        con.execute("ALTER TABLE wide ADD PRIMARY KEY (id)")
        finish_load(con, "wide")


# the columns of `bench` beside its key, and each row's values from g; `uuid` has them too
ORDINARY_COLUMNS = (
    "qty int NOT NULL, label text, amount numeric(12,2), attrs jsonb, "
    "created_at timestamptz NOT NULL"
)
ORDINARY_VALUES = """(g * 7919) % 1000,
               CASE WHEN g % 17 = 0 THEN NULL ELSE 'label-' || md5(g::text) END,
               ((g * 104729) % 10000000) / 100.0,
               jsonb_build_object('k', g % 100, 'tag', 't' || (g % 13), 'ok', g % 2 = 0),
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'"""


def _create_ordinary(url: str, table: str, key: str, key_value: str, rows: int) -> None:
    """`table` with the key column `key` (its definition), made from g by `key_value`, and the
    ordinary columns; a key defined without PRIMARY KEY gets one after the load."""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute(f"CREATE TABLE {table} ({key}, {ORDINARY_COLUMNS})")
        con.execute(
            f"INSERT INTO {table} SELECT {key_value}, {ORDINARY_VALUES} "
            f"FROM generate_series(1::bigint, {int(rows)}::bigint) AS g"
        )
        if "PRIMARY KEY" not in key:
            con.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key.split()[0]})")
        finish_load(con, table)


def create_bench(url: str, rows: int) -> None:
    """`bench`: a bigint primary key, int, text, numeric(12,2), jsonb, timestamptz."""
    _create_ordinary(url, "bench", "id bigint PRIMARY KEY", "g", rows)


def create_uuid(url: str, rows: int) -> None:
    """`uuid`: a uuid primary key (md5-derived: deterministic, in random order) and bench's
    ordinary columns; no integer key at all."""
    _create_ordinary(url, "uuid", "id uuid NOT NULL", "md5(g::text)::uuid", rows)


def finish_load(con: psycopg.Connection[tuple[object, ...]], table: str) -> None:
    """Flush, freeze and flush again. The throwaway cluster commits asynchronously: a VACUUM
    straight after the load cannot mark pages all-visible until the commit record is flushed
    (hint bits wait for it), and a snapshot COUNT(*) would then fetch every heap tuple. Flush
    first, as a table of a running database would be."""
    con.execute("CHECKPOINT")
    con.execute(f"VACUUM (FREEZE, ANALYZE) {table}")
    con.execute("CHECKPOINT")
    row = con.execute(
        "SELECT relallvisible::float / greatest(relpages, 1) FROM pg_class WHERE relname = %s",
        (table,),
    ).fetchone()
    visible = float(row[0]) if row else 0.0  # type: ignore[arg-type]
    log(f"{table}: pages all-visible after VACUUM: {100 * visible:.0f}%")


def table_sizes(url: str, table: str) -> dict[str, float]:
    """MB of the heap (pg_relation_size), its TOAST table, its indexes, and heap + TOAST."""
    with psycopg.connect(url) as con:
        row = con.execute(
            """
            SELECT pg_relation_size(c.oid),
                   coalesce(pg_relation_size(c.reltoastrelid), 0),
                   pg_indexes_size(c.oid)
            FROM pg_class c WHERE c.oid = %s::regclass""",
            (f'public."{table}"',),
        ).fetchone()
    if row is None:
        raise LookupError(f"no table {table!r}")
    heap, toast, indexes = (int(v) for v in row)
    mb = 1e6
    return {
        "heap_mb": round(heap / mb, 1),
        "toast_mb": round(toast / mb, 1),
        "indexes_mb": round(indexes / mb, 1),
        "heap_toast_mb": round((heap + toast) / mb, 1),
    }


# shape -> its loader (url, rows)
LOADERS = {"bench": create_bench, "wide": create_wide, "uuid": create_uuid}
