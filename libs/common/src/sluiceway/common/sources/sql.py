"""SQL text shared by the SQL sources: quoted names, the key-range predicate and the key bounds.

Chunk keys travel as text in ChunkRange. Integer keys (chunk_size / chunk_count) go through
int(); date/time keys (chunk_by_days) go through date/datetime.fromisoformat() and are written
back with isoformat(), so no text from an event ever reaches the SQL as it came. PostgreSQL gets
them as typed literals (`'2026-01-01T00:00:00+00:00'::timestamptz`, `'2026-01-01'::date`), which
keeps the comparison typed and an index condition; SQLite, which has no date type, compares
`julianday()` instants on both sides, with the boundary bound as a parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

from sluiceway.common.config import IDENT
from sluiceway.common.domain.events import (
    CHUNK_BY_KEYS,
    CHUNK_BY_PAGES,
    ChunkRange,
    ExportSpec,
    RowFilter,
)

from .base import SourceError

# placeholder(n) -> the n-th (1-based) bind marker: "?" for SQLite, "$n" for PostgreSQL
Placeholder = Callable[[int], str]
Key = int | date | datetime  # a datetime is a date too: test datetime first
Param = int | str

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_KEY_CHARS = 64


def qmark(_n: int) -> str:
    return "?"


def dollar(n: int) -> str:
    return f"${n}"


def quote_ident(name: str, dialect: str = "postgres") -> str:
    """A validated identifier (optionally schema-qualified), each part double-quoted; in
    MySQL, back-quoted (double quotes are string literals there unless ANSI_QUOTES is set)."""
    if not IDENT.fullmatch(name):
        raise SourceError(f"invalid identifier {name!r}", retryable=False)
    q = "`" if dialect == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split("."))


def quote_literal(text: str) -> str:
    """A standard SQL string literal (quotes doubled); NUL and backslashes are refused so the
    literal means the same whatever standard_conforming_strings says."""
    if "\x00" in text or "\\" in text:
        raise SourceError(f"unsafe literal {text[:40]!r}", retryable=False)
    return "'" + text.replace("'", "''") + "'"


def relation(spec: ExportSpec) -> str:
    """The FROM clause: the quoted table, or the configured SELECT as a subquery `q`; with the
    run's row filter (incremental cursor, time window), those rows only, as a subquery `f`, so
    that every query of the run (bounds, counts, reads) sees the same rows."""
    base = _base_relation(spec)
    if spec.row_filter is None:
        return base
    terms = filter_terms(spec.row_filter, dialect_of(spec))
    if not terms:
        return base
    return f"(SELECT * FROM {base} WHERE {' AND '.join(terms)}) AS f"


def dialect_of(spec: ExportSpec) -> str:
    """The SQL dialect of an export's source: its engine (postgres when unset)."""
    return spec.source.engine or "postgres"


def is_temporal(key_type: str) -> bool:
    """An Arrow type string of a date or timestamp column."""
    return key_type.startswith(("date", "timestamp"))


def filter_terms(rf: RowFilter, dialect: str) -> list[str]:
    """The row filter as SQL terms. Its bounds are parsed (integers, ISO dates or timestamps)
    and written back as literals, never pasted as they came."""
    temporal = is_temporal(rf.key_type)
    column = cursor_expr((rf.column, *rf.fallbacks), dialect)
    if temporal and dialect == "sqlite":
        column = sqlite_instant(column)

    def literal(text: str) -> str:
        value = parse_key(text, temporal=temporal)
        if not temporal:
            return str(value)
        if dialect == "sqlite":
            return f"julianday({quote_literal(value.isoformat())})"  # type: ignore[union-attr]
        return typed_literal(value, dialect)

    terms = []
    if rf.low:
        terms.append(f"{column} {'>=' if rf.low_inclusive else '>'} {literal(rf.low)}")
    if rf.high:
        terms.append(f"{column} {'<=' if rf.high_inclusive else '<'} {literal(rf.high)}")
    return terms


def cursor_expr(columns: Sequence[str], dialect: str) -> str:
    """A column, or COALESCE of several: a composite cursor's value."""
    quoted = [quote_ident(c, dialect) for c in columns]
    return quoted[0] if len(quoted) == 1 else f"COALESCE({', '.join(quoted)})"


def _base_relation(spec: ExportSpec) -> str:
    if spec.query:
        return f"({spec.query.strip().rstrip(';')}) AS q"
    if not spec.table:
        raise SourceError(f"export {spec.name!r} has neither table nor query", retryable=False)
    return quote_ident(spec.table, dialect_of(spec))


def column_list(columns: Sequence[str], dialect: str = "postgres") -> str:
    return ", ".join(quote_ident(c, dialect) for c in columns) if columns else "*"


def parse_key(text: str, *, temporal: bool = False) -> Key:
    """A chunk key carried as text: an integer, or with `temporal` an ISO date
    (`2026-01-01`) or timestamp, naive or with an offset (`2026-01-01T00:00:00+00:00`)."""
    if not temporal:
        try:
            return int(text)
        except ValueError:
            raise SourceError(f"chunk key {text!r} is not an integer", retryable=False) from None
    t = text.strip()
    try:
        if len(t) > MAX_KEY_CHARS:
            raise ValueError(t)
        if _DATE_ONLY.fullmatch(t):
            return date.fromisoformat(t)
        return datetime.fromisoformat(t)
    except ValueError:
        raise SourceError(
            f"chunk key {text[:MAX_KEY_CHARS]!r} is not an ISO date or timestamp", retryable=False
        ) from None


def pg_literal(key: Key) -> str:
    """A typed PostgreSQL literal of a parsed key (re-rendered, never the original text)."""
    if isinstance(key, datetime):
        kind = "timestamp" if key.tzinfo is None else "timestamptz"
        return f"{quote_literal(key.isoformat())}::{kind}"
    if isinstance(key, date):
        return f"{quote_literal(key.isoformat())}::date"
    return str(int(key))


def mysql_literal(key: Key) -> str:
    """A typed MySQL literal of a parsed key (re-rendered): `TIMESTAMP'...'` (an instant with an
    offset is written in UTC, the reading session's time zone), `DATE'...'`, or an integer."""
    if isinstance(key, datetime):
        if key.tzinfo is not None:
            key = key.astimezone(UTC).replace(tzinfo=None)
        return f"TIMESTAMP{quote_literal(key.isoformat(sep=' ', timespec='microseconds'))}"
    if isinstance(key, date):
        return f"DATE{quote_literal(key.isoformat())}"
    return str(int(key))


def typed_literal(key: Key, dialect: str) -> str:
    return mysql_literal(key) if dialect == "mysql" else pg_literal(key)


def sqlite_instant(expr: str) -> str:
    """A SQLite date/time value as a julianday instant in UTC: ISO text (naive text is UTC, an
    offset is honoured), numbers as Unix seconds (as the SQLite reader converts them). Text
    that is not a date gives NULL and so lands in the NULL-key chunk, where reading it fails
    loudly instead of the row being skipped."""
    return (
        f"(CASE WHEN typeof({expr}) IN ('integer', 'real') "
        f"THEN julianday({expr}, 'unixepoch') ELSE julianday({expr}) END)"
    )


def key_predicate(
    column: str,
    rng: ChunkRange | None,
    placeholder: Placeholder,
    first: int = 1,
    *,
    inline: bool = False,
    temporal: bool = False,
    dialect: str = "postgres",
) -> tuple[str, list[Param]]:
    """(WHERE clause or "", parameters) for a chunk range; the keys are bound. With `inline`,
    integer keys are written as literals instead and no parameter is returned: safe, since
    every key has been through int() (digits and a sign only). With `temporal`, keys are dates
    or timestamps: typed literals in PostgreSQL (always inline: parsed and re-rendered), bound
    ISO text compared as julianday() instants in SQLite."""
    if rng is None:
        return "", []
    if not column:
        raise SourceError("a chunk range needs spec.chunk_column", retryable=False)
    key = quote_ident(column, dialect)
    if temporal and dialect == "sqlite":
        key = sqlite_instant(key)
    if rng.null_keys:
        return f" WHERE {key} IS NULL", []
    terms: list[str] = []
    params: list[Param] = []

    def marker(text: str) -> str:
        value = parse_key(text, temporal=temporal)
        if temporal and dialect != "sqlite":
            return typed_literal(value, dialect)
        if inline and not temporal:
            return str(value)
        params.append(value if isinstance(value, int) else value.isoformat())
        bound = placeholder(first + len(params) - 1)
        return f"julianday({bound})" if temporal else bound

    if rng.start_key:
        terms.append(f"{key} >= {marker(rng.start_key)}")
    if rng.end_key:
        op = "<=" if rng.end_inclusive else "<"
        terms.append(f"{key} {op} {marker(rng.end_key)}")
    if not terms:
        # unbounded on both sides: every non-NULL key (NULL keys have their own chunk)
        terms.append(f"{key} IS NOT NULL")
    return " WHERE " + " AND ".join(terms), params


MAX_BLOCK = 2**32 - 1  # PostgreSQL block numbers are unsigned 32-bit


def block_number(text: str) -> int:
    """A page-range bound carried as text: a block number, through int() and range-checked."""
    try:
        block = int(text)
    except ValueError:
        raise SourceError(
            f"page bound {text[:40]!r} is not a block number", retryable=False
        ) from None
    if not 0 <= block <= MAX_BLOCK:
        raise SourceError(f"page bound {block} is not a block number", retryable=False)
    return block


def page_predicate(rng: ChunkRange | None) -> str:
    """The WHERE clause of a page range [start_key, end_key) of a PostgreSQL table: ctid bounds,
    which PostgreSQL 14+ reads as a TID range scan (only those pages, sequentially)."""
    if rng is None:
        return ""
    terms = []
    if rng.start_key:
        terms.append(f"ctid >= '({block_number(rng.start_key)},0)'::tid")
    if rng.end_key:
        terms.append(f"ctid < '({block_number(rng.end_key)},0)'::tid")
    return " WHERE " + " AND ".join(terms) if terms else ""


# ---- chunk_by keys: ranges of a key's tuples ---------------------------------------------------

KeyValue = int | str  # a tuple element: integers as numbers, every other type as its text
_DOLLAR_TAG = "$sluiceway_k$"


def key_tuple(text: str, width: int) -> list[KeyValue]:
    """A keyset bound carried as text: a JSON array of `width` integers and strings."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    ok = isinstance(value, list) and len(value) == width
    if ok and all(
        (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str) for v in value
    ):
        return value  # type: ignore[no-any-return]
    raise SourceError(
        f"key bound {text[:MAX_KEY_CHARS]!r} is not a JSON array of {width} key value(s)",
        retryable=False,
    )


def key_literal(value: KeyValue, dialect: str) -> str:
    """A key value as a literal the column's type accepts: an integer as digits; text as an
    untyped string that PostgreSQL and MySQL coerce to the column's type (uuid, timestamptz,
    numeric, varchar...) without giving up the index. No text is ever pasted as it came:
    PostgreSQL gets a dollar-quoted string, MySQL the hex of its UTF-8 bytes, SQLite a
    standard literal (it has no escapes)."""
    if isinstance(value, int):
        return str(int(value))
    if dialect == "mysql":
        return f"_utf8mb4 X'{value.encode().hex()}'"
    if dialect == "sqlite":
        if "\x00" in value:
            raise SourceError("a key value holds NUL", retryable=False)
        return "'" + value.replace("'", "''") + "'"
    if _DOLLAR_TAG in value or "\x00" in value:
        raise SourceError("a key value holds NUL or the literal's own tag", retryable=False)
    return f"{_DOLLAR_TAG}{value}{_DOLLAR_TAG}"


def _tuple_compare(keys: list[str], values: list[str], op: str, dialect: str) -> str:
    """(k1, k2, ...) op (v1, v2, ...) for op in >=, <: a row-value comparison in PostgreSQL
    and SQLite (an index range), spelled out for MySQL, whose range optimizer reads the
    expanded form: k1 > v1 OR (k1 = v1 AND (k2 > v2 OR ...)), with k1 >= / <= v1 beside it."""
    if dialect != "mysql" or len(keys) == 1:
        if len(keys) == 1:
            return f"{keys[0]} {op} {values[0]}"
        return f"({', '.join(keys)}) {op} ({', '.join(values)})"
    strict, last = (">", ">=") if op == ">=" else ("<", "<")
    expr = f"{keys[-1]} {last} {values[-1]}"
    for k, v in zip(reversed(keys[:-1]), reversed(values[:-1]), strict=True):
        expr = f"({k} {strict} {v} OR ({k} = {v} AND {expr}))"
    lead = ">=" if op == ">=" else "<="
    return f"({keys[0]} {lead} {values[0]} AND {expr})"


def keyset_predicate(spec: ExportSpec, rng: ChunkRange | None) -> str:
    """The WHERE clause of a keyset range [start_key, end_key) over spec.chunk_columns."""
    if rng is None:
        return ""
    columns = list(spec.chunk_columns)
    if not columns:
        raise SourceError("chunk_by keys needs the key columns (chunk_columns)", retryable=False)
    dialect = dialect_of(spec)
    keys = [quote_ident(c, dialect) for c in columns]
    terms = []
    for bound, op in ((rng.start_key, ">="), (rng.end_key, "<")):
        if bound:
            values = [key_literal(v, dialect) for v in key_tuple(bound, len(columns))]
            terms.append(_tuple_compare(keys, values, op, dialect))
    return " WHERE " + " AND ".join(terms) if terms else ""


def key_text(column: str, key_type: str, dialect: str) -> str:
    """A key column as a bound value: integers as they are, the rest as the server's text."""
    col = quote_ident(column, dialect)
    if key_type.startswith(("int", "uint")):
        return col
    if dialect == "mysql":
        return f"CAST({col} AS CHAR)"
    if dialect == "sqlite":
        return f"CAST({col} AS TEXT)"
    return f"{col}::text"


def key_values(rows: Sequence[Sequence[object]]) -> list[list[KeyValue]]:
    """Rows of boundaries_sql as bound values: integers as they are, the rest as text."""
    return [[v if isinstance(v, int) else str(v) for v in row] for row in rows]


def boundaries_sql(spec: ExportSpec, fields: Sequence[tuple[str, str]], every: int) -> str:
    """The key tuple of every `every`-th row in key order (the 1st, the every+1-th, ...):
    where each chunk of `every` rows starts. One pass over the key, in order."""
    dialect = dialect_of(spec)
    keys = ", ".join(quote_ident(name, dialect) for name, _ in fields)
    texts = ", ".join(key_text(name, typ, dialect) for name, typ in fields)
    return (
        f"SELECT {texts} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS sluiceway_rn "
        f"FROM {relation(spec)}) AS k WHERE (sluiceway_rn - 1) % {int(every)} = 0 "
        "ORDER BY sluiceway_rn"
    )


def spec_predicate(
    spec: ExportSpec, rng: ChunkRange | None, placeholder: Placeholder, *, inline: bool = False
) -> tuple[str, list[Param]]:
    """key_predicate for an export: its chunk column, its key kind and its engine; or the
    page_predicate of a chunk_by pages export; or the keyset_predicate of chunk_by keys."""
    if spec.chunk_by == CHUNK_BY_KEYS:
        return keyset_predicate(spec, rng), []
    if spec.chunk_by == CHUNK_BY_PAGES:
        if (spec.source.engine or "postgres") != "postgres":
            raise SourceError("chunk_by pages is for PostgreSQL tables", retryable=False)
        return page_predicate(rng), []
    return key_predicate(
        spec.chunk_column,
        rng,
        placeholder,
        inline=inline,
        temporal=spec.chunk_by_days > 0,
        dialect=dialect_of(spec),
    )


def select_sql(
    spec: ExportSpec, rng: ChunkRange | None, placeholder: Placeholder, columns: Sequence[str] = ()
) -> tuple[str, list[Param]]:
    where, params = spec_predicate(spec, rng, placeholder)
    cols = column_list(columns or spec.columns, dialect_of(spec))
    return f"SELECT {cols} FROM {relation(spec)}{where}", params


def count_sql(
    spec: ExportSpec, rng: ChunkRange | None, placeholder: Placeholder
) -> tuple[str, list[Param]]:
    where, params = spec_predicate(spec, rng, placeholder)
    return f"SELECT COUNT(*) FROM {relation(spec)}{where}", params


def bounds_sql(
    spec: ExportSpec,
    column: str = "",
    *,
    temporal: bool | None = None,
    fallbacks: Sequence[str] = (),
) -> str:
    """MIN, MAX (as text) and whether a NULL key exists, of `column` (default: the spec's chunk
    column). Date/time bounds (`temporal`; by default when chunk_by_days) come back as ISO 8601
    text whatever the server's DateStyle: `to_json()` in PostgreSQL, the julianday instant
    formatted in UTC in SQLite, MySQL's own text form (ISO with a space) in MySQL. With
    `fallbacks`, of COALESCE(column, *fallbacks) (a composite cursor)."""
    engine = dialect_of(spec)
    key = cursor_expr((column or spec.chunk_column, *fallbacks), engine)
    rel = relation(spec)
    if temporal is None:
        temporal = spec.chunk_by_days > 0
    if temporal and engine == "sqlite":
        instant = sqlite_instant(key)
        iso = "'%Y-%m-%dT%H:%M:%f+00:00'"
        return (
            f"SELECT strftime({iso}, MIN({instant})), strftime({iso}, MAX({instant})), "
            f"EXISTS (SELECT 1 FROM {rel} WHERE {instant} IS NULL) FROM {rel}"
        )
    if engine == "mysql":
        # integers as digits; dates as 'YYYY-MM-DD', date-times as 'YYYY-MM-DD HH:MM:SS[.ffffff]'
        # in the session's time zone (UTC): the source adds the offset for TIMESTAMP columns
        low, high = f"CAST(MIN({key}) AS CHAR)", f"CAST(MAX({key}) AS CHAR)"
    elif temporal:
        low, high = f"to_json(MIN({key})) #>> '{{}}'", f"to_json(MAX({key})) #>> '{{}}'"
    elif engine == "sqlite":
        low, high = f"MIN({key})", f"MAX({key})"
    else:
        low, high = f"MIN({key})::text", f"MAX({key})::text"
    return f"SELECT {low}, {high}, EXISTS (SELECT 1 FROM {rel} WHERE {key} IS NULL) FROM {rel}"


def with_key(spec: ExportSpec, column: str, *, only_key: bool = False) -> ExportSpec:
    """The spec chunked on `column` (e.g. the primary key resolved for a `table:` shortcut);
    with `only_key`, also selecting that column alone (to learn its type)."""
    return replace(spec, chunk_column=column, columns=(column,) if only_key else spec.columns)
