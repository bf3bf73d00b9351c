"""SQLite source: stdlib sqlite3 in read-only URI mode, declared column types mapped to Arrow.

Declared type (case-insensitive, first match wins) -> Arrow type:
  DECIMAL(p,s) / NUMERIC(p,s)      -> decimal128(p, s)   (TEXT or REAL values via Decimal(str(v)))
  TIMESTAMP* / DATETIME            -> timestamp[us, tz=UTC] (ISO text; naive text is UTC)
  DATE                             -> date32[day]
  BOOL*                            -> bool
  *INT*                            -> int64
  REAL / FLOA* / DOUB* / NUMERIC   -> double (float64)
  *CHAR* / *CLOB* / *TEXT* / JSON  -> string
  BLOB                             -> binary
  no declared type (expressions)   -> inferred from the first non-NULL value, else string
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa

from sluiceway.common.domain.events import CHUNK_BY_KEYS, ChunkRange, ExportSpec, SchemaField
from sluiceway.common.phases import Phases, timed, timed_batches
from sluiceway.common.redact import redact

from . import arrow_schema
from .base import Introspection, SourceError
from .sql import (
    boundaries_sql,
    bounds_sql,
    count_sql,
    key_values,
    qmark,
    quote_ident,
    relation,
    select_sql,
    with_key,
)

_DEC = re.compile(r"^(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$", re.I)
_TS_UTC = pa.timestamp("us", tz="UTC")
DEFAULT_BATCH = 65_536


def declared_to_arrow(declared: str) -> pa.DataType | None:
    """The Arrow type of a declared SQLite column type; None when nothing is declared."""
    d = declared.strip().upper()
    if not d:
        return None
    if m := _DEC.fullmatch(d):
        return pa.decimal128(int(m[1]), int(m[2] or 0))
    if d.startswith("TIMESTAMP") or d.startswith("DATETIME"):
        return _TS_UTC
    if d == "DATE":
        return pa.date32()
    if d.startswith("BOOL"):
        return pa.bool_()
    if "INT" in d:
        return pa.int64()
    if d.startswith(("REAL", "FLOA", "DOUB")) or d in ("NUMERIC", "DECIMAL"):
        return pa.float64()
    if any(k in d for k in ("CHAR", "CLOB", "TEXT", "JSON", "UUID")):
        return pa.string()
    if d.startswith("BLOB"):
        return pa.binary()
    return pa.string()


def _infer(value: Any) -> pa.DataType:
    if isinstance(value, bool | int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, bytes):
        return pa.binary()
    return pa.string()


# ---- column conversion: one pass per column, never per-row dicts ------------------------------


def _to_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _timestamps(col: tuple[Any, ...], typ: pa.DataType) -> pa.Array:
    if all(v is None or isinstance(v, str) for v in col):
        text = pa.array(col, type=pa.string())
        for interim in (pa.timestamp(typ.unit), typ):  # naive ISO text is UTC; else with offset
            try:
                return text.cast(interim).cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return pa.array([_to_utc(v) for v in col], type=typ)


def _decimals(col: tuple[Any, ...], typ: pa.Decimal128Type) -> pa.Array:
    quantum = Decimal(1).scaleb(-typ.scale)
    return pa.array(
        [None if v is None else Decimal(str(v)).quantize(quantum) for v in col], type=typ
    )


def _bools(col: tuple[Any, ...]) -> pa.Array:
    truthy = {"1", "t", "true", "y", "yes"}
    return pa.array(
        [
            None if v is None else (bool(v) if not isinstance(v, str) else v.lower() in truthy)
            for v in col
        ],
        type=pa.bool_(),
    )


def to_array(col: tuple[Any, ...], typ: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(typ):
        return _timestamps(col, typ)
    if pa.types.is_decimal(typ):
        return _decimals(col, typ)
    if pa.types.is_boolean(typ):
        return _bools(col)
    if pa.types.is_date32(typ):
        if all(v is None or isinstance(v, str) for v in col):
            return pa.array(col, type=pa.string()).cast(typ)
    if pa.types.is_string(typ) and not all(v is None or isinstance(v, str) for v in col):
        return pa.array([None if v is None else str(v) for v in col], type=typ)
    return pa.array(col, type=typ)


class SqliteSource:
    """Reads a SQLite file. One connection, opened read-only; create it in the reading thread."""

    def __init__(self, path: str) -> None:
        if not path:
            raise SourceError("sqlite source has no path", retryable=False)
        if not Path(path).exists():
            raise SourceError(f"sqlite database {path!r} does not exist", retryable=False)
        self.path = path
        try:
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    # ---- introspection --------------------------------------------------------------------

    def _declared(self, spec: ExportSpec) -> list[tuple[str, str, bool]]:
        """(name, declared type, nullable) of the exported relation's columns."""
        cur = self._con.cursor()
        if spec.query:
            cur.execute("DROP VIEW IF EXISTS temp._sluiceway_q")
            cur.execute(f"CREATE TEMP VIEW _sluiceway_q AS SELECT * FROM {relation(spec)}")
            rows = cur.execute("PRAGMA temp.table_info(_sluiceway_q)").fetchall()
        else:
            table = spec.table.split(".")
            pragma = (
                f"PRAGMA {quote_ident(table[0])}.table_info({quote_ident(table[1])})"
                if len(table) == 2
                else f"PRAGMA table_info({quote_ident(table[0])})"
            )
            rows = cur.execute(pragma).fetchall()
            if not rows:
                raise SourceError(f"no such table: {spec.table}", retryable=False)
        # (cid, name, type, notnull, dflt, pk)
        cols = [(r[1], r[2] or "", not r[3]) for r in rows]
        if spec.columns:
            by_name = {c[0]: c for c in cols}
            missing = [c for c in spec.columns if c not in by_name]
            if missing:
                raise SourceError(f"no such column: {', '.join(missing)}", retryable=False)
            cols = [by_name[c] for c in spec.columns]
        return cols

    def schema_of(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        try:
            cols = self._declared(spec)
            fields: list[SchemaField] = []
            sample: tuple[Any, ...] | None = None
            for i, (name, declared, nullable) in enumerate(cols):
                typ = declared_to_arrow(declared)
                if typ is None:
                    if sample is None:
                        sql, _ = select_sql(spec, None, qmark, [c[0] for c in cols])
                        sample = tuple(self._first_non_null(sql, len(cols)))
                    typ = _infer(sample[i]) if sample[i] is not None else pa.string()
                fields.append(SchemaField(name, str(typ), nullable, declared))
            return tuple(fields)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def _first_non_null(self, sql: str, width: int) -> list[Any]:
        out: list[Any] = [None] * width
        for row in self._con.execute(sql + " LIMIT 1000"):
            for i, v in enumerate(row):
                if out[i] is None and v is not None:
                    out[i] = v
            if all(v is not None for v in out):
                break
        return out

    def max_of(
        self, spec: ExportSpec, column: str, *, temporal: bool, fallbacks: tuple[str, ...] = ()
    ) -> str | None:
        try:
            _, high, _ = self._con.execute(
                bounds_sql(spec, column, temporal=temporal, fallbacks=fallbacks)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _error(exc) from exc
        return None if high is None else str(high)

    def introspect(self, spec: ExportSpec) -> Introspection:
        schema = self.schema_of(replace(spec, row_filter=None))
        try:
            (rows,) = self._con.execute(count_sql(spec, None, qmark)[0]).fetchone()
            column = spec.chunk_column
            pk: tuple[SchemaField, ...] = ()
            if not column and spec.mode == "chunked" and spec.table and not spec.query:
                pk = self._primary_key(spec)  # the `table:` shortcut; the planner decides
                # a single-column key's bounds, unless ranges of key tuples are planned
                keyset = spec.chunk_by == CHUNK_BY_KEYS
                column = pk[0].name if len(pk) == 1 and not keyset else ""
            if not column:
                return Introspection(schema=schema, row_estimate=int(rows), primary_key=pk)
            low, high, has_null = self._con.execute(bounds_sql(spec, column)).fetchone()
        except sqlite3.Error as exc:
            raise _error(exc) from exc
        key = next((f for f in (*pk, *schema) if f.name == column), None)
        if key is None:  # projected out of the export: its type all the same
            key = self.schema_of(with_key(spec, column, only_key=True))[0]
        return Introspection(
            schema=schema,
            row_estimate=int(rows),
            key_low=None if low is None else str(low),
            key_high=None if high is None else str(high),
            key_type=key.type,
            primary_key=pk,
            key_nullable=bool(has_null),
        )

    def _primary_key(self, spec: ExportSpec) -> tuple[SchemaField, ...]:
        """The table's primary key columns (pragma table_info's pk order), with Arrow types."""
        table = spec.table.split(".")
        pragma = (
            f"PRAGMA {quote_ident(table[0])}.table_info({quote_ident(table[1])})"
            if len(table) == 2
            else f"PRAGMA table_info({quote_ident(table[0])})"
        )
        rows = sorted((r for r in self._con.execute(pragma) if r[5]), key=lambda r: r[5])
        return tuple(
            SchemaField(r[1], str(declared_to_arrow(r[2] or "") or pa.string()), False, r[2] or "")
            for r in rows
        )

    # ---- reading ----------------------------------------------------------------------------

    def read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        phases: Phases | None = None,
    ) -> Iterator[pa.RecordBatch]:
        return timed_batches(self._batches(spec, rng, schema), phases)

    def count_and_read(
        self,
        spec: ExportSpec,
        rng: ChunkRange | None,
        schema: tuple[SchemaField, ...],
        *,
        snapshot: str = "",
        phases: Phases | None = None,
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        """One read transaction: the count and the rows see the same database state (rows are
        converted as they are fetched: `read` includes `convert` here)."""
        if snapshot:  # config.check_spec refuses consistent_snapshot for SQLite
            raise SourceError("sqlite has no exported snapshots to import", retryable=False)
        try:
            self._con.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _error(exc) from exc
        try:
            with timed(phases, "count"):
                count = self.count(spec, rng)
        except BaseException:
            self._con.rollback()
            raise
        batches = timed_batches(self._batches(spec, rng, schema), phases)
        return count, self._in_transaction(batches)

    def _in_transaction(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        finally:
            self._con.rollback()  # read-only: ending the transaction is all there is to do

    def _batches(
        self, spec: ExportSpec, rng: ChunkRange | None, schema: tuple[SchemaField, ...]
    ) -> Iterator[pa.RecordBatch]:
        fields = schema or self.schema_of(spec)
        target = arrow_schema(fields)
        sql, params = select_sql(spec, rng, qmark, [f.name for f in fields])
        size = spec.batch_size or DEFAULT_BATCH
        try:
            cur = self._con.execute(sql, params)
            while rows := cur.fetchmany(size):
                columns = list(zip(*rows, strict=True))
                del rows
                try:
                    arrays = [to_array(c, f.type) for c, f in zip(columns, target, strict=True)]
                except (pa.ArrowInvalid, pa.ArrowTypeError, InvalidOperation, ValueError) as exc:
                    raise SourceError(
                        redact(f"cannot convert a value to the planned schema: {exc}"),
                        retryable=False,
                    ) from exc
                yield pa.RecordBatch.from_arrays(arrays, schema=target)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def count(self, spec: ExportSpec, rng: ChunkRange | None) -> int:
        sql, params = count_sql(spec, rng, qmark)
        try:
            (n,) = self._con.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _error(exc) from exc
        return int(n)

    def key_boundaries(
        self, spec: ExportSpec, fields: tuple[SchemaField, ...], every: int
    ) -> list[list[int | str]]:
        sql = boundaries_sql(spec, [(f.name, f.type) for f in fields], every)
        try:
            rows = self._con.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise _error(exc) from exc
        return key_values(rows)

    def close(self) -> None:
        self._con.close()


def _error(exc: sqlite3.Error) -> SourceError:
    # a busy/locked database may free up; everything else (missing table, bad SQL) will not
    msg = str(exc)
    retryable = isinstance(exc, sqlite3.OperationalError) and (
        "locked" in msg or "busy" in msg or "unable to open" in msg
    )
    return SourceError(redact(f"sqlite: {msg}"), retryable=retryable)
