"""SQL text shared by the SQL sources: quoted names and the key-range predicate, values bound."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sluiceway.common.config import IDENT
from sluiceway.common.domain.events import ChunkRange, ExportSpec

from .base import SourceError

# placeholder(n) -> the n-th (1-based) bind marker: "?" for SQLite, "$n" for PostgreSQL
Placeholder = Callable[[int], str]


def qmark(_n: int) -> str:
    return "?"


def dollar(n: int) -> str:
    return f"${n}"


def quote_ident(name: str) -> str:
    """A validated identifier (optionally schema-qualified), each part double-quoted."""
    if not IDENT.fullmatch(name):
        raise SourceError(f"invalid identifier {name!r}", retryable=False)
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def relation(spec: ExportSpec) -> str:
    """The FROM clause: the quoted table, or the configured SELECT as a subquery `q`."""
    if spec.query:
        return f"({spec.query.strip().rstrip(';')}) AS q"
    if not spec.table:
        raise SourceError(f"export {spec.name!r} has neither table nor query", retryable=False)
    return quote_ident(spec.table)


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns) if columns else "*"


def parse_key(text: str) -> int:
    """Chunk keys are integers carried as text."""
    try:
        return int(text)
    except ValueError:
        raise SourceError(f"chunk key {text!r} is not an integer", retryable=False) from None


def key_predicate(
    column: str,
    rng: ChunkRange | None,
    placeholder: Placeholder,
    first: int = 1,
    *,
    inline: bool = False,
) -> tuple[str, list[int]]:
    """(WHERE clause or "", parameters) for a chunk range; the keys are bound. With `inline`,
    the keys are written as integer literals instead and no parameter is returned: safe, since
    every key has been through int() (digits and a sign only)."""
    if rng is None:
        return "", []
    if not column:
        raise SourceError("a chunk range needs spec.chunk_column", retryable=False)
    key = quote_ident(column)
    if rng.null_keys:
        return f" WHERE {key} IS NULL", []
    terms: list[str] = []
    params: list[int] = []

    def marker(value: int) -> str:
        if inline:
            return str(value)
        params.append(value)
        return placeholder(first + len(params) - 1)

    if rng.start_key:
        terms.append(f"{key} >= {marker(parse_key(rng.start_key))}")
    if rng.end_key:
        op = "<=" if rng.end_inclusive else "<"
        terms.append(f"{key} {op} {marker(parse_key(rng.end_key))}")
    if not terms:
        # unbounded on both sides: every non-NULL key (NULL keys have their own chunk)
        terms.append(f"{key} IS NOT NULL")
    return " WHERE " + " AND ".join(terms), params


def select_sql(
    spec: ExportSpec, rng: ChunkRange | None, placeholder: Placeholder, columns: Sequence[str] = ()
) -> tuple[str, list[int]]:
    where, params = key_predicate(spec.chunk_column, rng, placeholder)
    cols = column_list(columns or spec.columns)
    return f"SELECT {cols} FROM {relation(spec)}{where}", params


def count_sql(
    spec: ExportSpec, rng: ChunkRange | None, placeholder: Placeholder
) -> tuple[str, list[int]]:
    where, params = key_predicate(spec.chunk_column, rng, placeholder)
    return f"SELECT COUNT(*) FROM {relation(spec)}{where}", params


def bounds_sql(spec: ExportSpec) -> str:
    key = quote_ident(spec.chunk_column)
    return (
        f"SELECT MIN({key}), MAX({key}), "
        f"EXISTS (SELECT 1 FROM {relation(spec)} WHERE {key} IS NULL) FROM {relation(spec)}"
    )
