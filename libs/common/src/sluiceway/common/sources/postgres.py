"""PostgreSQL source: Arrow-native reads through ADBC (binary COPY decoded in C), streamed.

Why ADBC and how (measured in docs/pg-readers.md):
- Each chunk runs in a short READ ONLY transaction on a session with statement_timeout,
  lock_timeout (the export's, from its tuning profile) and TIME ZONE 'UTC' set; both connections
  carry libpq's connect_timeout, so a host that drops packets fails the attempt (retryably)
  instead of hanging. Batches come from `cursor.fetch_record_batch()` with
  `adbc.postgresql.batch_size_hint_bytes` (tuning.batch_hint_bytes: batch_size_memory_mb, or
  batch_size x the row width measured on the export's earlier batches, which then also caps
  each batch at batch_size rows), so memory stays bounded whatever the chunk size.
- Range keys cannot be bound: ADBC runs a query with bind parameters as a prepared statement
  whose whole result is materialised. They are written as integer literals after int() parsed
  them (digits and a sign only), which also keeps the key comparison an index condition.
- Types (pgtypes, docs/types.md): introspection maps each column's type OID and typmod to an
  Arrow type string (SchemaField.type) and keeps PostgreSQL's name for it (source_type); the
  reader selects each column so that the driver hands over that type or text that Arrow casts
  to it (NUMERIC as ::text, cheaper than ADBC's binary numeric decoding), and checks what the
  driver cannot flag (infinite timestamps, multi-dimensional arrays): a value that has no
  faithful Arrow form fails the export, it is never changed.
- consistent_snapshot: the planner's session exports its REPEATABLE READ snapshot
  (`export_snapshot`), introspects inside it and keeps the transaction open (`hold_snapshot`,
  idle_in_transaction_session_timeout = 0 for that session only) until the run ends; each
  chunk's transaction imports it (`SET TRANSACTION SNAPSHOT`) before its count and rows. An id
  PostgreSQL no longer knows (SQLSTATE 22023: the holder ended) is SnapshotLost, permanent.
- Errors: retryable or permanent by the SQLSTATE table of `pgerrors` (connection lost, lock
  timeout, serialization failure, too many connections, shutdowns: retryable; syntax, undefined
  table/column, permission denied, bad values, statement timeout, unknown: permanent). The
  SQLSTATE comes from the driver's error; libpq's connection-phase errors have none and are
  classified by their text. Batches are read through the driver manager's error-aware reader,
  so that an error in mid-stream keeps its SQLSTATE.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import adbc_driver_postgresql.dbapi as pgdb
import psycopg
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sluiceway.common import tuning
from sluiceway.common.domain.events import (
    CHUNK_BY_KEYS,
    CHUNK_BY_PAGES,
    ChunkRange,
    ExportSpec,
    SchemaField,
)
from sluiceway.common.phases import Phases, timed, timed_batches
from sluiceway.common.redact import redact

from . import arrow_schema, pgerrors, pgtypes
from .base import Introspection, SnapshotLost, SourceError
from .sql import (
    boundaries_sql,
    bounds_sql,
    count_sql,
    dollar,
    key_values,
    quote_ident,
    relation,
    spec_predicate,
    with_key,
)

log = logging.getLogger(__name__)
BATCH_HINT_BYTES = 16 << 20
TEMP_BYTES_SQL = "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"
# pg_export_snapshot() ids are hex fields and dashes ("00000003-0000001B-1"); only such text
# is ever written into SET TRANSACTION SNAPSHOT '...'
SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+){1,3}")
INVALID_PARAMETER_VALUE = "22023"  # what SET TRANSACTION SNAPSHOT answers for an unknown id


def with_connect_timeout(url: str, seconds: int) -> str:
    """`url` with libpq's connect_timeout, unless it names one already (a URI or a key=value
    string). ADBC has no connect option of its own: it hands the URI to libpq."""
    if "connect_timeout" in url:
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return f"{url}{'&' if '?' in url else '?'}connect_timeout={int(seconds)}"
    return f"{url} connect_timeout={int(seconds)}"


def with_tls(url: str, tls: Mapping[str, str]) -> str:
    """`url` with a source's TLS settings (libpq keywords: sslmode, sslrootcert, sslcert,
    sslkey), as a key=value string. A keyword both in the URL and in the source is an error:
    which one was meant cannot be told. The URL never appears in a message."""
    given = {k: v for k, v in tls.items() if v}
    if not given:
        return url
    try:
        in_url = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise SourceError(
            "the source URL is not a libpq connection string (postgresql://... or key=value)",
            retryable=False,
        ) from None
    if both := sorted(set(given) & set(in_url)):
        raise SourceError(
            f"{', '.join(both)} is set both in the source URL and in the source's config; keep one",
            retryable=False,
        )
    return make_conninfo(url, **given)


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE a driver error carries, or "": ADBC and psycopg errors have `sqlstate`,
    psycopg also `diag.sqlstate`, ADBC also a PG_DIAG_SQLSTATE detail."""
    state = getattr(exc, "sqlstate", None)
    if not state:
        state = getattr(getattr(exc, "diag", None), "sqlstate", None)
    if not state:
        for key, value in getattr(exc, "details", None) or ():
            if key in (b"PG_DIAG_SQLSTATE", "PG_DIAG_SQLSTATE"):
                state = value.decode("ascii", "replace") if isinstance(value, bytes) else value
                break
    return state if isinstance(state, str) else ""


def classify(exc: BaseException) -> SourceError:
    """Map a driver error (ADBC or psycopg) to a SourceError with the retry decision of the
    pgerrors table and a redacted reason."""
    if isinstance(exc, SourceError):
        return exc
    text = str(exc).strip() or type(exc).__name__
    verdict = pgerrors.classify_error(sqlstate_of(exc), text)
    return SourceError(
        redact(pgerrors.describe(verdict, text)),
        retryable=verdict.retryable,
        sqlstate=verdict.sqlstate,
    )


class SnapshotHold:
    """The planner's open transaction whose snapshot the chunks of one run import. Holding it
    keeps the snapshot importable; `release` ends it. Synchronous, and not thread-safe: call
    it from one thread at a time."""

    def __init__(self, con: Any, snapshot_id: str) -> None:
        self._con = con
        self.snapshot_id = snapshot_id

    def alive(self) -> bool:
        """The holding session is still in its transaction (as far as the client knows)."""
        con = self._con
        return (
            con is not None
            and not con.closed
            and con.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        )

    def release(self) -> None:
        """End the transaction and the session; the snapshot can no longer be imported."""
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.rollback()
            with contextlib.suppress(Exception):
                con.close()


class PostgresSource:
    """One PostgreSQL database. The ADBC reading connection is opened on first use and kept
    for the next chunks (connecting costs more than reading a small chunk: ADBC loads the type
    catalogue on connect); any error drops it, so the next attempt starts on a fresh session.
    Introspection and counts share one psycopg connection, kept the same way. Not thread-safe:
    one source per thread."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int = 3_600_000,
        lock_timeout_ms: int = 10_000,
        batch_size_hint_bytes: int | None = None,
        connect_timeout_s: int = 10,
    ) -> None:
        self._url = url
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        # None: from each export's spec (tuning.batch_hint_bytes); a number: always that
        self.batch_size_hint_bytes = batch_size_hint_bytes
        self.connect_timeout_s = connect_timeout_s
        self._reader: Any = None
        self._meta: Any = None
        self._flush_stats = False  # pg_stat_force_next_flush() exists (PostgreSQL 15+)
        self._row_bytes: dict[str, float] = {}  # export name -> measured Arrow bytes per row
        self._snapshot_id = ""  # exported by export_snapshot() on the metadata session

    def _reading_connection(self) -> Any:
        if self._reader is None:
            try:
                con = pgdb.connect(
                    with_connect_timeout(self._url, self.connect_timeout_s), autocommit=True
                )
                with con.cursor() as cur:
                    for stmt in self._session_sql():
                        cur.execute(stmt)
                    cur.execute("SELECT current_setting('server_version_num')::int >= 150000")
                    row = cur.fetchone()
                    self._flush_stats = bool(row and row[0])
            except Exception as exc:
                raise classify(exc) from exc
            self._reader = con
        return self._reader

    def _drop_reading_connection(self) -> None:
        con, self._reader = self._reader, None
        if con is not None:
            try:
                con.close()
            except Exception:
                pass

    def _session_sql(self) -> list[str]:
        return [
            f"SET statement_timeout = {int(self.statement_timeout_ms)}",
            f"SET lock_timeout = {int(self.lock_timeout_ms)}",
            "SET TIME ZONE 'UTC'",
            # gentle on the source: one backend per reader (the export's parallelism is its
            # workers), and no JIT compilation for plain range scans (tens of ms per query)
            "SET max_parallel_workers_per_gather = 0",
            "SET jit = off",
        ]

    # ---- introspection (psycopg: description carries the numeric typmod) ---------------------

    def _psycopg(self) -> Any:
        if self._meta is None or self._meta.closed:
            try:
                con = psycopg.connect(
                    self._url, autocommit=True, connect_timeout=self.connect_timeout_s
                )
                for stmt in self._session_sql():
                    con.execute(stmt)
            except Exception as exc:
                raise classify(exc) from exc
            self._meta = con
        return self._meta

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor on the metadata connection; any error drops the connection."""
        con = self._psycopg()
        try:
            with con.cursor() as cur:
                yield cur
        except Exception as exc:
            self._meta = None
            with contextlib.suppress(Exception):
                con.close()
            raise classify(exc) from exc

    def _schema(self, cur: Any, spec: ExportSpec) -> tuple[SchemaField, ...]:
        cols = ", ".join(quote_ident(c) for c in spec.columns) if spec.columns else "*"
        cur.execute(f"SELECT {cols} FROM {relation(spec)} LIMIT 0")
        desc = list(cur.description)
        # the result's type modifiers: numeric(p, s), and the element typmod of numeric(p, s)[]
        typmods = [cur.pgresult.fmod(i) for i in range(len(desc))]
        not_null: set[str] = set()
        if spec.table and not spec.query:
            cur.execute(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass "
                "AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull",
                (quote_ident(spec.table),),
            )
            not_null = {r[0] for r in cur.fetchall()}
        types = self._type_info(cur, {d.type_code for d in desc})
        fields = []
        for d, typmod in zip(desc, typmods, strict=True):
            info = types.get(d.type_code, pgtypes.TypeInfo(str(d.type_code), 0))
            fields.append(
                pgtypes.field_of(
                    d.name,
                    d.type_code,
                    typmod,
                    d.name not in not_null,
                    info.name,
                    elem_oid=info.elem_oid,
                    fmt=spec.format or "parquet",
                )
            )
        return tuple(fields)

    @staticmethod
    def _type_info(cur: Any, oids: set[int]) -> dict[int, pgtypes.TypeInfo]:
        cur.execute(pgtypes.TYPE_INFO_SQL, (list(oids),))
        return {int(o): pgtypes.TypeInfo(n, int(e)) for o, n, e in cur.fetchall()}

    def schema_of(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        with self._cursor() as cur:
            return self._schema(cur, spec)

    def max_of(
        self, spec: ExportSpec, column: str, *, temporal: bool, fallbacks: tuple[str, ...] = ()
    ) -> str | None:
        with self._cursor() as cur:
            cur.execute(bounds_sql(spec, column, temporal=temporal, fallbacks=fallbacks))
            _, high, _ = cur.fetchone()
        return None if high is None else str(high)

    def introspect(self, spec: ExportSpec) -> Introspection:
        with self._cursor() as cur:
            schema = self._schema(cur, replace(spec, row_filter=None))
            estimate = -1
            if spec.table and not spec.query and spec.row_filter is None:
                cur.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    (quote_ident(spec.table),),
                )
                row = cur.fetchone()
                estimate = int(row[0]) if row and row[0] is not None else -1
            if estimate < 0:
                cur.execute(count_sql(spec, None, lambda n: f"${n}")[0])
                estimate = int(cur.fetchone()[0])
            column = spec.chunk_column
            pk: tuple[SchemaField, ...] = ()
            if not column and spec.mode == "chunked" and spec.table and not spec.query:
                pk = self._primary_key(cur, spec)  # the `table:` shortcut; the planner decides
                # a single-column key's bounds, unless ranges of key tuples are planned
                keyset = spec.chunk_by == CHUNK_BY_KEYS
                column = pk[0].name if len(pk) == 1 and not keyset else ""
            cur.execute(TEMP_BYTES_SQL)
            row = cur.fetchone()
            temp = int(row[0]) if row and row[0] is not None else None
            if spec.chunk_by == CHUNK_BY_PAGES:
                pages, block_size = self._heap_blocks(cur, spec)
                return Introspection(
                    schema=schema,
                    row_estimate=estimate,
                    temp_bytes=temp,
                    pages=pages,
                    block_size=block_size,
                )
            if not column:
                return Introspection(
                    schema=schema, row_estimate=estimate, primary_key=pk, temp_bytes=temp
                )
            cur.execute(bounds_sql(spec, column))
            low, high, has_null = cur.fetchone()
            kf = next((f for f in (*pk, *schema) if f.name == column), None)
            if kf is None:  # projected out of the export: its type all the same
                kf = self._schema(cur, with_key(spec, column, only_key=True))[0]
        return Introspection(
            schema=schema,
            row_estimate=estimate,
            key_low=low,
            key_high=high,
            key_type=kf.type,
            key_nullable=bool(has_null),
            primary_key=pk,
            temp_bytes=temp,
        )

    @staticmethod
    def _heap_blocks(cur: Any, spec: ExportSpec) -> tuple[int, int]:
        """(blocks, block size) of a table's heap for chunk_by pages: its size now (relpages
        is only as fresh as the last VACUUM or ANALYZE). Only a plain table or materialized
        view has a heap whose pages a TID range scan reads, and only PostgreSQL 14+ has it."""
        cur.execute(
            "SELECT current_setting('server_version_num')::int, c.relkind, "
            "pg_relation_size(c.oid), current_setting('block_size')::int "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            (quote_ident(spec.table),),
        )
        version, kind, size, block_size = cur.fetchone()
        if int(version) < 140000:
            raise SourceError(
                f"chunk_by pages needs PostgreSQL 14 or later (TID range scans); this server "
                f"is {int(version) // 10000}: chunk on a key instead",
                retryable=False,
            )
        if kind not in ("r", "m"):
            what = {"v": "a view", "p": "a partitioned table", "f": "a foreign table"}
            raise SourceError(
                f"chunk_by pages reads a table's heap, and {spec.table} is "
                f"{what.get(kind, f'of relkind {kind!r}')}: chunk on a key instead",
                retryable=False,
            )
        return int(size) // int(block_size), int(block_size)

    @staticmethod
    def _primary_key(cur: Any, spec: ExportSpec) -> tuple[SchemaField, ...]:
        """The table's primary key columns, in key order, with their Arrow types."""
        cur.execute(
            "SELECT a.attname, a.atttypid::int, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey::int2[], a.attnum)",
            (quote_ident(spec.table),),
        )
        return tuple(pgtypes.field_of(n, oid, -1, False, t) for n, oid, t in cur.fetchall())

    # ---- consistent_snapshot: the planner's side ------------------------------------------

    def export_snapshot(self, label: str) -> str:
        """Open a REPEATABLE READ READ ONLY transaction on the metadata session and export its
        snapshot; the introspection that follows (schema, bounds, counts, cursor high-water
        mark) reads that same snapshot. `label` becomes the session's application_name, so an
        operator can see in pg_stat_activity which run holds it."""
        with self._cursor() as cur:
            cur.execute("SET idle_in_transaction_session_timeout = 0")  # this session only
            cur.execute("SELECT set_config('application_name', %s, false)", (label[:63],))
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = cur.execute("SELECT pg_export_snapshot()").fetchone()
        snapshot_id = str(row[0]) if row else ""
        if not SNAPSHOT_ID.fullmatch(snapshot_id):
            raise SourceError(f"unexpected snapshot id {snapshot_id!r}", retryable=False)
        self._snapshot_id = snapshot_id
        return snapshot_id

    def hold_snapshot(self) -> SnapshotHold:
        """Hand the session holding the exported snapshot over to the caller: this source no
        longer uses or closes it. Raises SnapshotLost when the transaction has ended (an error
        during introspection drops the session, and the snapshot with it)."""
        hold = SnapshotHold(self._meta, self._snapshot_id)
        self._meta = None
        if not self._snapshot_id or not hold.alive():
            hold.release()
            raise SnapshotLost(self._snapshot_id or "?", "its session ended while planning")
        return hold

    # ---- reading (ADBC) ---------------------------------------------------------------------

    def read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        phases: Phases | None = None,
    ) -> Iterator[pa.RecordBatch]:
        stream = self._stream(spec, rng, schema, counted=False, phases=phases)
        next(stream)  # the transaction is open
        return stream

    def count_and_read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        snapshot: str = "",
        phases: Phases | None = None,
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        stream = self._stream(spec, rng, schema, counted=True, snapshot=snapshot, phases=phases)
        count = next(stream)
        assert isinstance(count, int)
        return count, stream

    def _stream(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        counted: bool,
        snapshot: str = "",
        phases: Phases | None = None,
    ) -> Iterator[int | pa.RecordBatch]:
        """Yields the range's COUNT(*) first (-1 when not `counted`), then its batches, all in
        one READ ONLY transaction (REPEATABLE READ when counted: one snapshot for both; with
        `snapshot`, the exported snapshot of that id, imported before anything is read)."""
        if snapshot and not SNAPSHOT_ID.fullmatch(snapshot):
            raise SourceError(f"malformed snapshot id {snapshot[:40]!r}", retryable=False)
        fields = schema or self.schema_of(spec)
        target = arrow_schema(fields)
        # keys inlined as integer literals: ADBC materialises a parameterised query's whole
        # result, and binding them through set_config()/current_setting() cost ~20% more server
        # CPU (docs/pg-readers.md)
        where, _ = spec_predicate(spec, rng, dollar, inline=True)
        select = pgtypes.select_list(fields)
        rel = relation(spec)
        begin = (
            "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
            if counted or snapshot
            else "BEGIN TRANSACTION READ ONLY"
        )
        hint = self.batch_size_hint_bytes or tuning.batch_hint_bytes(
            spec, self._row_bytes.get(spec.name)
        )
        # rows mode (no memory hint): batches of exactly batch_size rows; the hint only brings
        # the driver's batches near that size
        rows_mode = spec.batch_size_memory_mb <= 0 and spec.batch_size > 0
        done = False
        try:
            cur = self._begin(begin, hint, phases)
            try:
                if snapshot:
                    self._import_snapshot(cur, snapshot)
                if counted:
                    with timed(phases, "count"):
                        cur.execute(f"SELECT COUNT(*) FROM {rel}{where}")
                        row = cur.fetchone()
                    assert row is not None
                    yield int(row[0])
                else:
                    yield -1
                with timed(phases, "first_byte"):
                    cur.execute(f"SELECT {select} FROM {rel}{where}")
                measured = [0, 0]  # rows, bytes of the driver's batches
                batches = (
                    _conformed(b, target, phases)
                    for b in _measured(timed_batches(iter(_record_batches(cur)), phases), measured)
                )
                yield from _rebatch(batches, spec.batch_size) if rows_mode else batches
                if measured[0]:
                    self._row_bytes[spec.name] = measured[1] / measured[0]
                cur.execute("COMMIT")
                if self._flush_stats:
                    # this session's counters (temp_bytes among them) reach pg_stat_database
                    # when it next goes idle, not up to 10 s later: the committer reads them
                    cur.execute("SELECT pg_stat_force_next_flush()")
                    cur.fetchall()
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
            done = True
        except SourceError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        finally:
            if not done:  # an error, or the consumer stopped early: the session state is unknown
                self._drop_reading_connection()

    @staticmethod
    def _import_snapshot(cur: Any, snapshot: str) -> None:
        """The transaction's first statement: read the plan's exported snapshot. PostgreSQL
        answers 22023 (invalid snapshot identifier) once the exporting transaction has ended;
        that is SnapshotLost, never a quiet read of another snapshot."""
        try:
            cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        except Exception as exc:
            if sqlstate_of(exc) == INVALID_PARAMETER_VALUE:
                raise SnapshotLost(snapshot, "SQLSTATE 22023") from exc
            raise

    def _begin(self, begin: str, hint: int, phases: Phases | None = None) -> Any:
        """A cursor on the reading connection, inside a transaction opened by `begin`.

        A kept connection whose session ended while it sat idle between chunks (a restart or
        failover, idle_session_timeout, pg_terminate_backend) fails here, before anything was
        read: it is replaced once, quietly, rather than costing the chunk an attempt and a
        backoff. A fresh connection's failure is the chunk's."""
        kept = self._reader is not None
        while True:
            with timed(phases if self._reader is None else None, "connect"):
                con = self._reading_connection()
            cur = con.cursor()
            try:
                cur.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(hint)}
                )
                cur.execute(begin)
                return cur
            except Exception as exc:
                with contextlib.suppress(Exception):
                    cur.close()
                self._drop_reading_connection()
                error = classify(exc)
                if not (kept and error.retryable):
                    raise error from exc
                log.warning("reading session lost while idle, reconnecting: %s", error)
                kept = False

    def temp_bytes(self) -> int | None:
        """pg_stat_database.temp_bytes of this database: every session's temporary-file bytes
        since the statistics were last reset (other sessions' included), or None when the
        statistics cannot be read. Never raises: a measurement must not fail a run."""
        try:
            with self._cursor() as cur:
                row = cur.execute(TEMP_BYTES_SQL).fetchone()
        except SourceError as exc:
            log.warning("cannot read pg_stat_database.temp_bytes: %s", exc)
            return None
        return int(row[0]) if row and row[0] is not None else None

    def count(self, spec: ExportSpec, rng: ChunkRange | None) -> int:
        where, params = spec_predicate(spec, rng, lambda n: "%s")
        with self._cursor() as cur:
            row = cur.execute(f"SELECT COUNT(*) FROM {relation(spec)}{where}", params).fetchone()
        return int(row[0])

    def key_boundaries(
        self, spec: ExportSpec, fields: tuple[SchemaField, ...], every: int
    ) -> list[list[int | str]]:
        sql = boundaries_sql(spec, [(f.name, f.type) for f in fields], every)
        with self._cursor() as cur:
            rows = cur.execute(sql).fetchall()
        return key_values(rows)

    def close(self) -> None:
        self._drop_reading_connection()
        meta, self._meta = self._meta, None
        if meta is not None:
            with contextlib.suppress(Exception):
                meta.close()


def _conformed(batch: pa.RecordBatch, target: pa.Schema, phases: Phases | None) -> pa.RecordBatch:
    with timed(phases, "convert"):
        return pgtypes.conform(batch, target)


def _measured(batches: Iterable[pa.RecordBatch], into: list[int]) -> Iterator[pa.RecordBatch]:
    """`batches`, adding their rows and bytes to `into` ([rows, bytes]) as they pass."""
    for batch in batches:
        into[0] += batch.num_rows
        into[1] += batch.nbytes
        yield batch


def _rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of exactly `size` rows (the last one fewer). Whole slices pass
    without a copy; a batch pieced together from two driver batches is copied once."""
    pending: list[pa.RecordBatch] = []
    have, rows, first = 0, 0, None
    for batch in batches:
        first = batch if first is None else first
        rows += batch.num_rows
        while batch.num_rows:
            take = min(size - have, batch.num_rows)
            pending.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
    elif not rows and first is not None:  # no rows at all: still one (empty) batch
        yield first


def _record_batches(cur: Any) -> Iterable[pa.RecordBatch]:
    """The result's batches, read so that an error in mid-stream keeps its SQLSTATE.

    `fetch_record_batch()` hands out the bare pyarrow reader (apache/arrow-adbc#1523), whose
    errors are OSErrors carrying the server's text only, which is localised and names few
    conditions: a serialization failure or a lost session in mid-stream could only be guessed
    at (pgerrors.MESSAGE_SQLSTATES). The driver manager's wrapper around the same reader
    re-raises the driver's own error, SQLSTATE included. It is private, so it is used only
    while it still wraps that very reader; otherwise the text is classified."""
    reader = cur.fetch_record_batch()
    wrapper = getattr(getattr(cur, "_results", None), "reader", None)
    if wrapper is not None and getattr(wrapper, "_reader", None) is reader:
        return wrapper  # type: ignore[no-any-return]
    return reader  # type: ignore[no-any-return]
