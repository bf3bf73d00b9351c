"""PostgreSQL source: Arrow-native reads through ADBC (binary COPY decoded in C), streamed.

Why ADBC and how (measured in docs/pg-readers.md):
- Each chunk runs in a short READ ONLY transaction on a session with statement_timeout,
  lock_timeout and TIME ZONE 'UTC' set. Batches come from `cursor.fetch_record_batch()` with
  `adbc.postgresql.batch_size_hint_bytes`, so memory stays bounded whatever the chunk size.
- Range keys cannot be bound: ADBC runs a query with bind parameters as a prepared statement
  whose whole result is materialised. They are written as integer literals after int() parsed
  them (digits and a sign only), which also keeps the key comparison an index condition.
- Type rule (Arrow type string in SchemaField.type): int2/int4/int8 -> int16/int32/int64,
  float4/float8 -> float/double, bool -> bool, numeric(p,s) with p <= 38 -> decimal128(p, s)
  (selected as text, cheaper than ADBC's binary numeric decoding, and cast to decimal128 with
  the introspected precision and scale), unbounded numeric (no typmod) or p > 38 -> string
  (exact text, no rounding), date -> date32[day], timestamp -> timestamp[us], timestamptz ->
  timestamp[us, tz=UTC], time -> time64[us], bytea -> binary, text/varchar/char/name ->
  string, json/jsonb/uuid and every other type -> string (selected as `::text`).
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
from collections.abc import Iterable, Iterator
from typing import Any

import adbc_driver_postgresql.dbapi as pgdb
import psycopg
import pyarrow as pa

from sluiceway.common.domain.events import ChunkRange, ExportSpec, SchemaField
from sluiceway.common.redact import redact

from . import arrow_schema, pgerrors
from .base import Introspection, SourceError
from .sql import count_sql, dollar, key_predicate, quote_ident, relation

log = logging.getLogger(__name__)
BATCH_HINT_BYTES = 16 << 20

# type OID -> Arrow type string; anything else is read as text
_OID_TYPES: dict[int, str] = {
    16: "bool",
    17: "binary",
    20: "int64",
    21: "int16",
    23: "int32",
    26: "int64",
    700: "float",
    701: "double",
    25: "string",
    1043: "string",
    1042: "string",
    19: "string",
    1082: "date32[day]",
    1114: "timestamp[us]",
    1184: "timestamp[us, tz=UTC]",
    1083: "time64[us]",
}
_NATIVE_TEXT = {25, 1043, 1042, 19}
_NUMERIC = 1700


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
    return SourceError(redact(pgerrors.describe(verdict, text)), retryable=verdict.retryable)


def field_of(
    name: str, oid: int, precision: int | None, scale: int | None, nullable: bool, source_type: str
) -> SchemaField:
    if oid == _NUMERIC:
        if precision and 0 < precision <= 38:
            typ = f"decimal128({precision}, {scale or 0})"
        else:
            typ = "string"
    else:
        typ = _OID_TYPES.get(oid, "string")
    return SchemaField(name=name, type=typ, nullable=nullable, source_type=source_type)


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
        batch_size_hint_bytes: int = BATCH_HINT_BYTES,
        connect_timeout_s: int = 10,
    ) -> None:
        self._url = url
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.batch_size_hint_bytes = batch_size_hint_bytes
        self.connect_timeout_s = connect_timeout_s
        self._reader: Any = None
        self._meta: Any = None

    def _reading_connection(self) -> Any:
        if self._reader is None:
            try:
                con = pgdb.connect(self._url, autocommit=True)
                with con.cursor() as cur:
                    for stmt in self._session_sql():
                        cur.execute(stmt)
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
        not_null: set[str] = set()
        if spec.table and not spec.query:
            cur.execute(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass "
                "AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull",
                (quote_ident(spec.table),),
            )
            not_null = {r[0] for r in cur.fetchall()}
        type_names = self._type_names(cur, {d.type_code for d in desc})
        return tuple(
            field_of(
                d.name,
                d.type_code,
                d.precision,
                d.scale,
                d.name not in not_null,
                type_names.get(d.type_code, str(d.type_code)),
            )
            for d in desc
        )

    @staticmethod
    def _type_names(cur: Any, oids: set[int]) -> dict[int, str]:
        cur.execute(
            "SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)",
            (list(oids),),
        )
        return {int(o): n for o, n in cur.fetchall()}

    def schema_of(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        with self._cursor() as cur:
            return self._schema(cur, spec)

    def introspect(self, spec: ExportSpec) -> Introspection:
        with self._cursor() as cur:
            schema = self._schema(cur, spec)
            estimate = -1
            if spec.table and not spec.query:
                cur.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    (quote_ident(spec.table),),
                )
                row = cur.fetchone()
                estimate = int(row[0]) if row and row[0] is not None else -1
            if estimate < 0:
                cur.execute(count_sql(spec, None, lambda n: f"${n}")[0])
                estimate = int(cur.fetchone()[0])
            if not spec.chunk_column:
                return Introspection(schema=schema, row_estimate=estimate)
            key = quote_ident(spec.chunk_column)
            rel = relation(spec)
            cur.execute(
                f"SELECT MIN({key})::text, MAX({key})::text, "
                f"EXISTS (SELECT 1 FROM {rel} WHERE {key} IS NULL) FROM {rel}"
            )
            low, high, has_null = cur.fetchone()
        kf = next((f for f in schema if f.name == spec.chunk_column), None)
        return Introspection(
            schema=schema,
            row_estimate=estimate,
            key_low=low,
            key_high=high,
            key_type=kf.type if kf else "int64",
            key_nullable=bool(has_null),
        )

    # ---- reading (ADBC) ---------------------------------------------------------------------

    @staticmethod
    def _select_list(fields: tuple[SchemaField, ...], oids: dict[str, str]) -> str:
        out = []
        for f in fields:
            col = quote_ident(f.name)
            source = oids.get(f.name, "")
            # NUMERIC is read as text and cast by Arrow: PostgreSQL's numeric_out is cheaper than
            # ADBC's binary numeric decoding (measured: -0.45 CPU-s per 1M rows, docs/pg-readers.md)
            native = source != "numeric" and (
                f.type != "string" or source in ("text", "character varying", "character", "name")
            )
            out.append(col if native else f"{col}::text AS {col}")
        return ", ".join(out)

    def read(
        self, spec: ExportSpec, rng: ChunkRange | None, schema: tuple[SchemaField, ...]
    ) -> Iterator[pa.RecordBatch]:
        stream = self._stream(spec, rng, schema, counted=False)
        next(stream)  # the transaction is open
        return stream

    def count_and_read(
        self, spec: ExportSpec, rng: ChunkRange | None, schema: tuple[SchemaField, ...]
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        stream = self._stream(spec, rng, schema, counted=True)
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
    ) -> Iterator[int | pa.RecordBatch]:
        """Yields the range's COUNT(*) first (-1 when not `counted`), then its batches, all in
        one READ ONLY transaction (REPEATABLE READ when counted: one snapshot for both)."""
        fields = schema or self.schema_of(spec)
        target = arrow_schema(fields)
        # keys inlined as integer literals: ADBC materialises a parameterised query's whole
        # result, and binding them through set_config()/current_setting() cost ~20% more server
        # CPU (docs/pg-readers.md)
        where, _ = key_predicate(spec.chunk_column, rng, dollar, inline=True)
        select = self._select_list(fields, {f.name: f.source_type for f in fields})
        rel = relation(spec)
        begin = (
            "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
            if counted
            else "BEGIN TRANSACTION READ ONLY"
        )
        done = False
        try:
            cur = self._begin(begin)
            try:
                if counted:
                    cur.execute(f"SELECT COUNT(*) FROM {rel}{where}")
                    row = cur.fetchone()
                    assert row is not None
                    yield int(row[0])
                else:
                    yield -1
                cur.execute(f"SELECT {select} FROM {rel}{where}")
                for batch in _record_batches(cur):
                    yield _conform(batch, target)
                cur.execute("COMMIT")
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

    def _begin(self, begin: str) -> Any:
        """A cursor on the reading connection, inside a transaction opened by `begin`.

        A kept connection whose session ended while it sat idle between chunks (a restart or
        failover, idle_session_timeout, pg_terminate_backend) fails here, before anything was
        read: it is replaced once, quietly, rather than costing the chunk an attempt and a
        backoff. A fresh connection's failure is the chunk's."""
        kept = self._reader is not None
        while True:
            con = self._reading_connection()
            cur = con.cursor()
            try:
                cur.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(self.batch_size_hint_bytes)}
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

    def count(self, spec: ExportSpec, rng: ChunkRange | None) -> int:
        where, params = key_predicate(spec.chunk_column, rng, lambda n: "%s")
        with self._cursor() as cur:
            row = cur.execute(f"SELECT COUNT(*) FROM {relation(spec)}{where}", params).fetchone()
        return int(row[0])

    def close(self) -> None:
        self._drop_reading_connection()
        meta, self._meta = self._meta, None
        if meta is not None:
            with contextlib.suppress(Exception):
                meta.close()


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


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """Rename/cast a driver batch to the planned schema (NUMERIC text -> decimal128)."""
    if batch.schema.equals(target):
        return batch
    arrays = []
    for col, field in zip(batch.columns, target, strict=True):
        if col.type.equals(field.type):
            arrays.append(col)
            continue
        try:
            arrays.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SourceError(
                redact(f"column {field.name!r}: cannot convert {col.type} to {field.type}: {exc}"),
                retryable=False,
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=target)
