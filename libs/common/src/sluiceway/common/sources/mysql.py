"""MySQL/MariaDB source: Arrow batches streamed by ConnectorX, introspection over PyMySQL.

Why these two (measured in docs/mysql-readers.md): ConnectorX reads the binary protocol into
Arrow in Rust, as fast as the server's own client reading text into /dev/null, in batches of
a set number of rows; the pure-Python drivers (PyMySQL, asyncmy) spend 2.5-16x longer building
Python objects. PyMySQL carries the result metadata that the type mapping needs (type code,
flags, decimals, character set) and runs the small statements (bounds, counts, the cursor's
high-water mark).

- Every session runs in UTC (`time_zone = '+00:00'`), READ ONLY, with the export's lock wait
  (`innodb_lock_wait_timeout`, `lock_wait_timeout`) and statement timeout (MariaDB's
  `max_statement_time`, MySQL's `max_execution_time`).
- A chunk is one transaction, `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`, on the
  reading session. Its COUNT(*) for reconciliation runs first in that transaction into a
  session variable, and the SELECT carries the variable as a last column: the count and the
  rows come from one snapshot and one session (ConnectorX runs the statements it is given
  before the query on the query's own connection). A range with no row is counted again
  outside it, so that rows a reader lost are still seen.
- There is no exported snapshot in MySQL: `consistent_snapshot` (one cut for every chunk) is
  refused by the config check.
- Types: mysqltypes (docs/types.md). Errors: mysqlerrors, by the server's error number.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import pyarrow as pa

from sluiceway.common import tuning
from sluiceway.common.domain.events import CHUNK_BY_KEYS, ChunkRange, ExportSpec, SchemaField
from sluiceway.common.phases import Phases, timed, timed_batches
from sluiceway.common.redact import redact

from . import arrow_schema, mysqlerrors, mysqltypes
from .base import Introspection, SourceError
from .sql import (
    boundaries_sql,
    bounds_sql,
    count_sql,
    key_values,
    qmark,
    quote_ident,
    relation,
    spec_predicate,
    with_key,
)

log = logging.getLogger(__name__)
COUNT_VARIABLE = "@sluiceway_rows"
COUNT_COLUMN = "sluiceway_rows"
DEFAULT_ROW_BYTES = 256
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 1_024, 1_048_576
SCHEMES = ("mysql", "mariadb")


def classify(exc: BaseException) -> SourceError:
    """A driver error (PyMySQL, ConnectorX, a ConnectorX panic) as a SourceError with the retry
    decision of the mysqlerrors table and a redacted reason."""
    if isinstance(exc, SourceError):
        return exc
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ == "PanicException" and not mysqlerrors.connection_failed(text):
        # ConnectorX also panics on a lost connection (kept above: its text holds no data);
        # otherwise the panic text may quote the value it choked on, and a row value never
        # goes into an event: only the kind of failure is kept
        return SourceError(
            "mysql reader error: ConnectorX could not convert a value of the result "
            "(its panic text is left out: it may quote row data)",
            retryable=False,
        )
    verdict = mysqlerrors.classify(mysqlerrors.code_of(exc), text)
    return SourceError(
        redact(mysqlerrors.describe(verdict, text)), retryable=verdict.retryable, code=verdict.code
    )


# sslmode (the PostgreSQL words, as in the config) -> the ConnectorX/mysql-crate ssl-mode
CX_SSL_MODES = {
    "disable": "DISABLED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}


def tls_context(sslmode: str, sslrootcert: str) -> ssl.SSLContext | None:
    """PyMySQL's TLS for a source's sslmode: None for none (no sslmode, or disable)."""
    if sslmode in ("", "disable"):
        return None
    ctx = ssl.create_default_context(cafile=sslrootcert or None)
    if sslmode == "require":  # encrypted, the certificate not checked
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif sslmode == "verify-ca":  # signed by sslrootcert, any name
        ctx.check_hostname = False
    return ctx


def parse_url(url: str) -> dict[str, Any]:
    """mysql://user:password@host:port/database (or mariadb://) as PyMySQL's arguments. The URL
    never appears in a message."""
    try:
        u = urlsplit(url)
        port = u.port or 3306
    except ValueError:
        raise SourceError(
            "the source URL is not a mysql://user:pw@host:port/db URL", retryable=False
        ) from None
    if u.scheme not in SCHEMES or not u.hostname:
        raise SourceError(
            "the source URL must be mysql://user:password@host:port/database", retryable=False
        )
    database = unquote(u.path.lstrip("/"))
    if not database:
        raise SourceError(
            "the source URL names no database (mysql://.../database)", retryable=False
        )
    return {
        "host": u.hostname,
        "port": port,
        "user": unquote(u.username or ""),
        "password": unquote(u.password or ""),
        "database": database,
    }


class MySqlSource:
    """One MySQL or MariaDB database. The PyMySQL session (introspection, counts) is opened on
    first use and kept; any error drops it. Each read opens its own ConnectorX session, which
    ends with the read. Not thread-safe: one source per thread."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int = 3_600_000,
        lock_timeout_ms: int = 10_000,
        connect_timeout_s: int = 10,
        sslmode: str = "",
        sslrootcert: str = "",
    ) -> None:
        self._params = parse_url(url)
        if sslmode and sslmode not in CX_SSL_MODES:
            raise SourceError(
                f"sslmode {sslmode!r} is not one of {', '.join(CX_SSL_MODES)} for mysql",
                retryable=False,
            )
        self.sslmode, self.sslrootcert = sslmode, sslrootcert
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._meta: Any = None
        self._mariadb: bool | None = None
        self._row_bytes: dict[str, float] = {}  # export name -> measured Arrow bytes per row

    # ---- sessions ---------------------------------------------------------------------------

    def _reader_url(self) -> str:
        p = self._params
        tls = {}
        if self.sslmode:
            tls["ssl-mode"] = CX_SSL_MODES[self.sslmode]
            if self.sslrootcert:
                tls["ssl-ca"] = self.sslrootcert
        query = urlencode(
            {
                # the mysql crate would switch to the server's Unix socket when it can see
                # one, as another user: stay on the address configured
                "prefer_socket": "false",
                "tcp_connect_timeout_ms": str(int(self.connect_timeout_s * 1000)),
                **tls,
            }
        )
        auth = f"{quote(p['user'], safe='')}:{quote(p['password'], safe='')}"
        return f"mysql://{auth}@{p['host']}:{p['port']}/{quote(p['database'], safe='')}?{query}"

    def _session_sql(self) -> list[str]:
        lock_s = max(1, -(-int(self.lock_timeout_ms) // 1000))
        if self._flavour_mariadb():
            timeout = (
                f"SET SESSION max_statement_time = {int(self.statement_timeout_ms) / 1000:.3f}"
            )
        else:
            timeout = f"SET SESSION max_execution_time = {int(self.statement_timeout_ms)}"
        return [
            "SET SESSION time_zone = '+00:00'",
            "SET NAMES utf8mb4",
            f"SET SESSION innodb_lock_wait_timeout = {lock_s}",
            f"SET SESSION lock_wait_timeout = {lock_s}",
            timeout,
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET SESSION TRANSACTION READ ONLY",
        ]

    def _flavour_mariadb(self) -> bool:
        """MariaDB or MySQL, from the server's version (read off the PyMySQL session's
        handshake: the session is opened, and configured, on first use)."""
        if self._mariadb is None:
            self._mariadb = "mariadb" in self._connection().get_server_info().lower()
        return self._mariadb

    def _connection(self) -> Any:
        if self._meta is None:
            import pymysql

            try:
                tls = tls_context(self.sslmode, self.sslrootcert)
                con = pymysql.connect(
                    **self._params,
                    **({"ssl": tls} if tls is not None else {}),
                    charset="utf8mb4",
                    connect_timeout=self.connect_timeout_s,
                    autocommit=True,
                )
            except Exception as exc:
                raise classify(exc) from exc
            self._meta = con  # before configuring it: the settings ask for the flavour
            self._configure(con)
        return self._meta

    def _configure(self, con: Any) -> None:
        try:
            with con.cursor() as cur:
                for stmt in self._session_sql():
                    cur.execute(stmt)
        except Exception as exc:
            self._drop()
            raise classify(exc) from exc

    def _drop(self) -> None:
        con, self._meta = self._meta, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor on the PyMySQL session; any error drops the session."""
        con = self._connection()
        try:
            with con.cursor() as cur:
                yield cur
        except SourceError:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise classify(exc) from exc

    # ---- introspection ----------------------------------------------------------------------

    def _schema(self, cur: Any, spec: ExportSpec) -> tuple[SchemaField, ...]:
        cols = ", ".join(quote_ident(c, "mysql") for c in spec.columns) if spec.columns else "*"
        cur.execute(f"SELECT {cols} FROM {relation(spec)} LIMIT 0")
        return tuple(
            mysqltypes.field_of(
                f.name,
                f.type_code,
                flags=f.flags,
                length=f.length,
                scale=f.scale,
                charset=f.charsetnr,
                nullable=not f.flags & 1,  # NOT_NULL_FLAG
            )
            for f in cur._result.fields  # the protocol's column definitions (PyMySQL's own)
        )

    def schema_of(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        with self._cursor() as cur:
            return self._schema(cur, spec)

    def max_of(
        self, spec: ExportSpec, column: str, *, temporal: bool, fallbacks: tuple[str, ...] = ()
    ) -> str | None:
        with self._cursor() as cur:
            cur.execute(bounds_sql(spec, column, temporal=temporal, fallbacks=fallbacks))
            _, high, _ = cur.fetchone()
            if high is None:
                return None
            key_type = self._schema(cur, with_key(spec, column, only_key=True))[0].type
        return iso_key(str(high), key_type)

    def introspect(self, spec: ExportSpec) -> Introspection:
        with self._cursor() as cur:
            schema = self._schema(cur, replace(spec, row_filter=None))
            estimate = -1
            if spec.table and not spec.query and spec.row_filter is None:
                estimate = self._table_rows(cur, spec)
            if estimate < 0:
                cur.execute(count_sql(spec, None, qmark)[0])
                estimate = int(cur.fetchone()[0])
            column = spec.chunk_column
            pk: tuple[SchemaField, ...] = ()
            if not column and spec.mode == "chunked" and spec.table and not spec.query:
                pk = self._primary_key(cur, spec)  # the `table:` shortcut; the planner decides
                # a single-column key's bounds, unless ranges of key tuples are planned
                keyset = spec.chunk_by == CHUNK_BY_KEYS
                column = pk[0].name if len(pk) == 1 and not keyset else ""
            if not column:
                return Introspection(schema=schema, row_estimate=estimate, primary_key=pk)
            cur.execute(bounds_sql(spec, column))
            low, high, has_null = cur.fetchone()
            kf = next((f for f in (*pk, *schema) if f.name == column), None)
            if kf is None:  # projected out of the export: its type all the same
                kf = self._schema(cur, with_key(spec, column, only_key=True))[0]
        return Introspection(
            schema=schema,
            row_estimate=estimate,
            key_low=None if low is None else iso_key(str(low), kf.type),
            key_high=None if high is None else iso_key(str(high), kf.type),
            key_type=kf.type,
            key_nullable=bool(has_null),
            primary_key=pk,
        )

    @staticmethod
    def _split(table: str) -> tuple[str | None, str]:
        schema, _, name = table.rpartition(".")
        return schema or None, name

    def _table_rows(self, cur: Any, spec: ExportSpec) -> int:
        """InnoDB's estimate (information_schema.TABLES.TABLE_ROWS), or -1."""
        schema, name = self._split(spec.table)
        cur.execute(
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            (schema, name),
        )
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    def _primary_key(self, cur: Any, spec: ExportSpec) -> tuple[SchemaField, ...]:
        """The table's primary key columns, in key order, with their Arrow types."""
        schema, name = self._split(spec.table)
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s "
            "AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (schema, name),
        )
        columns = [r[0] for r in cur.fetchall()]
        if not columns:
            return ()
        fields = self._schema(cur, replace(spec, columns=tuple(columns), row_filter=None))
        return tuple(replace(f, nullable=False) for f in fields)

    # ---- reading (ConnectorX) ---------------------------------------------------------------

    def read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        phases: Phases | None = None,
    ) -> Iterator[pa.RecordBatch]:
        _, batches = self._stream(spec, rng, schema, counted=False, phases=phases)
        return batches

    def count_and_read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        snapshot: str = "",
        phases: Phases | None = None,
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        if snapshot:  # config.check_spec refuses consistent_snapshot for MySQL
            raise SourceError("mysql has no exported snapshots to import", retryable=False)
        return self._stream(spec, rng, schema, counted=True, phases=phases)

    def _batch_rows(self, spec: ExportSpec) -> int:
        """Rows per ConnectorX batch: batch_size in rows mode, else the memory hint divided by
        the row width measured on the export's earlier batches."""
        if spec.batch_size_memory_mb <= 0 and spec.batch_size > 0:
            return max(1, spec.batch_size)
        width = self._row_bytes.get(spec.name) or DEFAULT_ROW_BYTES
        rows = int(tuning.batch_hint_bytes(spec, width) / width)
        return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, rows))

    def _stream(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        counted: bool,
        phases: Phases | None = None,
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        """(the range's COUNT(*), or -1 when not `counted`; its batches), both read in one
        transaction with a consistent snapshot. The first batch is read before this returns:
        it carries the count."""
        import connectorx as cx

        fields = schema or self.schema_of(spec)
        target = arrow_schema(fields)
        where, _ = spec_predicate(spec, rng, qmark, inline=True)
        rel = relation(spec)
        select = mysqltypes.select_list(fields)
        pre = [*self._session_sql(), "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"]
        if counted:
            pre.append(f"SELECT COUNT(*) FROM {rel}{where} INTO {COUNT_VARIABLE}")
            select += f", CAST({COUNT_VARIABLE} AS SIGNED) AS {COUNT_COLUMN}"
        query = f"SELECT {select} FROM {rel}{where}"
        try:
            with timed(phases, "first_byte"):
                reader = cx.read_sql(
                    self._reader_url(),
                    query,
                    return_type="arrow_stream",
                    batch_size=self._batch_rows(spec),
                    pre_execution_query=pre,
                )
            batches = timed_batches(_guarded(iter(reader)), phases)
            first = next(batches, None)
        except SourceError:
            raise
        except BaseException as exc:  # ConnectorX panics are BaseExceptions
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise classify(exc) from exc
        count = -1
        if counted:
            if first is not None and first.num_rows:
                count = int(first.column(len(fields))[0].as_py())
            else:
                count = self.count(spec, rng)  # nothing came: count again, outside it
        return count, self._conformed(spec, first, batches, target, phases)

    def _conformed(
        self,
        spec: ExportSpec,
        first: pa.RecordBatch | None,
        batches: Iterator[pa.RecordBatch],
        target: pa.Schema,
        phases: Phases | None,
    ) -> Iterator[pa.RecordBatch]:
        if first is None:  # no row at all: still one (empty) batch
            yield pa.RecordBatch.from_pylist([], schema=target)
            return
        rows = nbytes = 0
        for batch in itertools.chain((first,), batches):
            with timed(phases, "convert"):
                out = mysqltypes.conform(batch, target)
            rows += out.num_rows
            nbytes += out.nbytes
            yield out
        if rows:
            self._row_bytes[spec.name] = nbytes / rows

    def count(self, spec: ExportSpec, rng: ChunkRange | None) -> int:
        where, params = spec_predicate(spec, rng, lambda n: "%s")
        with self._cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {relation(spec)}{where}", params)
            return int(cur.fetchone()[0])

    def key_boundaries(
        self, spec: ExportSpec, fields: tuple[SchemaField, ...], every: int
    ) -> list[list[int | str]]:
        sql = boundaries_sql(spec, [(f.name, f.type) for f in fields], every)
        with self._cursor() as cur:
            cur.execute(sql)
            rows = cur.fetchall()
        return key_values(rows)

    def close(self) -> None:
        self._drop()


def _guarded(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """ConnectorX's batches, its errors (and panics) raised as SourceErrors."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            raise classify(exc) from exc
        yield batch


def iso_key(text: str, key_type: str) -> str:
    """A key bound as MySQL prints it, as the planner reads keys: a TIMESTAMP column's value
    (the session's UTC) with its offset, a DATETIME's as it is (naive), ISO's 'T' either way."""
    if not key_type.startswith("timestamp"):
        return text
    iso = text.replace(" ", "T", 1)
    return iso + "+00:00" if "tz=" in key_type else iso
