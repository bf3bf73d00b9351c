"""Row sources: introspection and Arrow batch readers, one module per engine."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from sluiceway.common.domain.events import ExportSpec, SchemaField

from .base import Introspection, Source, SourceError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Introspection",
    "Source",
    "SourceError",
    "arrow_schema",
    "arrow_type",
    "open_source",
    "temp_bytes_of",
]

_DECIMAL = re.compile(r"^decimal(128|256)\((\d+),\s*(-?\d+)\)$")
# list<item: T> and list<item: T not null> (str() of a pyarrow list type); T may be a list
_LIST = re.compile(r"^(list|large_list)<item: (.+?)( not null)?>$")
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]$")
_SIMPLE = {
    "null": "null",
    "bool": "bool_",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "halffloat": "float16",
    "float": "float32",
    "float32": "float32",
    "double": "float64",
    "float64": "float64",
    "string": "string",
    "utf8": "string",
    "large_string": "large_string",
    "binary": "binary",
    "large_binary": "large_binary",
    "date32": "date32",
    "date32[day]": "date32",
    "date64": "date64",
    "date64[ms]": "date64",
}


def arrow_type(text: str) -> pa.DataType:
    """Parse an Arrow type string as written in SchemaField.type (str(pa type) round-trips)."""
    import pyarrow as pa

    t = text.strip()
    if t in _SIMPLE:
        return getattr(pa, _SIMPLE[t])()
    if m := _DECIMAL.fullmatch(t):
        factory = pa.decimal128 if m[1] == "128" else pa.decimal256
        return factory(int(m[2]), int(m[3]))
    if m := _TIMESTAMP.fullmatch(t):
        return pa.timestamp(m[1], tz=m[2])
    if m := re.fullmatch(r"time(32|64)\[(s|ms|us|ns)\]", t):
        return (pa.time32 if m[1] == "32" else pa.time64)(m[2])
    if t == "extension<arrow.uuid>":
        return pa.uuid()
    if t == "month_day_nano_interval":
        return pa.month_day_nano_interval()
    if m := _LIST.fullmatch(t):
        item, required = m[2], m[3] is not None
        factory = pa.list_ if m[1] == "list" else pa.large_list
        return factory(pa.field("item", arrow_type(item), nullable=not required))
    raise ValueError(f"unsupported Arrow type {text!r}")


def arrow_schema(fields: Iterable[SchemaField]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, arrow_type(f.type), nullable=f.nullable) for f in fields])


def preload() -> None:
    """Import every engine's driver now. psycopg and ADBC take about 0.4 s to import; services
    call this at start-up, before they report ready, so that no run pays for it."""
    from . import mysql, postgres, sqlite  # noqa: F401


def open_source(spec: ExportSpec, env: Mapping[str, str] | None = None) -> Source:
    """The source of an export. PostgreSQL's URL is read from the variable named by
    spec.source.url_env in `env` (default: the process environment), never from the spec."""
    engine = spec.source.engine
    if engine == "sqlite":
        from .sqlite import SqliteSource

        return SqliteSource(spec.source.path)
    if engine in ("postgres", "mysql"):
        import os

        e = os.environ if env is None else env
        name = spec.source.url_env
        url = e.get(name, "") if name else ""
        if not url:
            raise SourceError(
                f"export {spec.name!r}: environment variable {name or '<url_env>'!r} is not set",
                retryable=False,
            )
        from sluiceway.common import tuning

        statement_ms, lock_ms = tuning.session_timeouts_ms(spec)
        if engine == "mysql":
            from .mysql import MySqlSource

            return MySqlSource(
                url,
                statement_timeout_ms=statement_ms,
                lock_timeout_ms=lock_ms,
                connect_timeout_s=tuning.connect_timeout_s(spec),
                sslmode=spec.source.sslmode,
                sslrootcert=spec.source.sslrootcert,
            )
        from .postgres import PostgresSource, with_tls

        tls = {k: getattr(spec.source, k) for k in ("sslmode", "sslrootcert", "sslcert", "sslkey")}
        return PostgresSource(
            with_tls(url, tls),
            statement_timeout_ms=statement_ms,
            lock_timeout_ms=lock_ms,
            connect_timeout_s=tuning.connect_timeout_s(spec),
        )
    raise SourceError(f"export {spec.name!r}: unknown source engine {engine!r}", retryable=False)


def temp_bytes_of(source: Source) -> int | None:
    """The source database's cumulative temporary-file bytes (PostgreSQL's
    pg_stat_database.temp_bytes, every session's), or None where there is no such figure."""
    measure = getattr(source, "temp_bytes", None)
    return measure() if callable(measure) else None
