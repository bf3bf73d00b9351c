"""`sluiceway init`: a starting config for one table, from what the source says about it.

The mode follows the table's size: a small table is one `full` read; a large one with a
single-column integer primary key is `chunked` on that key, in chunks sized for parallel
workers. The document is checked by the config loader before it is written."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluiceway.common.config import ConfigError, load_text
from sluiceway.common.domain.events import ExportSpec
from sluiceway.common.sources import Introspection, SourceError, open_source

CHUNK_ABOVE_ROWS = 1_000_000  # fewer rows: one full read beats planning and committing chunks
TARGET_CHUNKS = 16  # enough chunks for several workers to share, few enough to plan cheaply
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 100_000, 2_000_000
INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
SOURCE_NAME = "main"


class InitError(Exception):
    """A one-line problem naming the flag (or the config field) it concerns."""


@dataclass(frozen=True)
class Choice:
    mode: str
    chunk_column: str = ""
    chunk_size: int = 0
    why: str = ""


def choose(info: Introspection) -> Choice:
    """The mode for a table of this size and key (pure)."""
    rows = info.row_estimate
    pk = info.primary_key
    key = pk[0] if len(pk) == 1 and pk[0].type in INTEGER_TYPES else None
    if rows < CHUNK_ABOVE_ROWS:
        return Choice("full", why=f"about {rows:,} row{'' if rows == 1 else 's'}: one read")
    if key is None:
        return Choice(
            "full",
            why=f"about {rows:,} rows, but no single-column integer primary key to cut "
            "ranges of: one read (set chunk_column to an indexed integer column to chunk it)",
        )
    size = min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, math.ceil(rows / TARGET_CHUNKS)))
    size = int(float(f"{size:.2g}"))  # a round number: 130,000 rather than 126,553
    return Choice(
        "chunked",
        chunk_column=key.name,
        chunk_size=size,
        why=f"about {rows:,} rows: ranges of the primary key {key.name}, "
        f"about {math.ceil(rows / size)} chunks",
    )


def url_engine(url: str) -> str:
    """The engine a source URL names by its scheme: mysql:// and mariadb:// are mysql, any
    other (postgresql://, postgres://, a libpq key=value string) postgres."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return "mysql" if scheme in ("mysql", "mariadb") else "postgres"


def export_name(table: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", table.split(".")[-1]).strip("_")
    return name or "export"


def document(
    *,
    name: str,
    table: str,
    engine: str,
    source_env: str = "",
    sqlite_path: str = "",
    destination: str,
    choice: Choice | None = None,
    columns: int | None = None,
) -> str:
    """The YAML text (comments included)."""
    if engine in ("postgres", "mysql"):
        source = f"{{engine: {engine}, url_env: {source_env}}}"
        server = "PostgreSQL" if engine == "postgres" else "MySQL/MariaDB"
        head = f"# {table} on {server} (the URL is read from ${source_env} when a run starts)"
    else:
        source = f"{{engine: sqlite, path: {_quote(sqlite_path)}}}"
        head = f"# {table} in the SQLite file {sqlite_path}"
    lines = [
        "# A starting config written by `sluiceway init`; docs/config.md lists every field.",
        head,
        "version: 1",
        "sources:",
        f"  {SOURCE_NAME}: {source}",
        "exports:",
        f"  - name: {name}",
        f"    source: {SOURCE_NAME}",
        f"    table: {table}",
        f"    destination: {_quote(destination)}",
    ]
    if choice is not None:
        lines.append(f"    # {choice.why}")
        lines.append(f"    mode: {choice.mode}")
        if choice.mode == "chunked":
            lines.append(f"    chunk_column: {choice.chunk_column}")
            lines.append(f"    chunk_size: {choice.chunk_size}")
    if columns is not None:
        lines.append(f"    # all {columns} columns of the table; list some under `columns:`")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spec_of(text: str, env: Mapping[str, str]) -> ExportSpec:
    try:
        return next(iter(load_text(text, file_name="<init>", env=env).values()))
    except ConfigError as exc:
        raise InitError(exc.detail if exc.field == "" else f"{exc.field}: {exc.detail}") from None


def build(
    *,
    table: str,
    source_env: str = "",
    sqlite_path: str = "",
    name: str = "",
    destination: str = "exports",
    env: Mapping[str, str] | None = None,
) -> tuple[str, Choice]:
    """Introspect the table through the same source code the services use, choose the mode,
    and return the checked document."""
    from sluiceway.cli.doctor import source_problem

    e = dict(os.environ if env is None else env)
    if bool(source_env) == bool(sqlite_path):
        raise InitError("give one of --source-env VAR (PostgreSQL, MySQL) or --sqlite PATH")
    if source_env and not e.get(source_env):
        raise InitError(f"--source-env: environment variable {source_env} is not set")
    kw: dict[str, Any] = dict(
        name=name or export_name(table),
        table=table,
        engine=url_engine(e[source_env]) if source_env else "sqlite",
        source_env=source_env,
        sqlite_path=os.path.abspath(sqlite_path) if sqlite_path else "",
        destination=destination,
    )
    probe = _spec_of(document(**kw) + "    mode: chunked\n    chunk_size: 1\n", e)
    try:
        source = open_source(probe, e)
        try:
            info = source.introspect(probe)
        finally:
            source.close()
    except SourceError as exc:
        where, text = source_problem(probe, exc)
        flag = (
            "--table"
            if where in ("table", "columns")
            else ("--source-env" if source_env else "--sqlite")
        )
        raise InitError(f"{flag}: {text}") from None
    choice = choose(info)
    text = document(**kw, choice=choice, columns=len(info.schema))
    _spec_of(text, e)  # what is written loads
    return text, choice
