"""YAML config: several exports per file, credentials only through environment variables.

Every error names the file, the export and the field, on one line:
    exports.yaml: export 'orders': field 'mode': unknown mode 'fulll' (expected one of: ...)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluiceway.common.domain.events import ExportSpec, SourceSpec

MODES = ("full", "chunked")
FORMATS = ("parquet", "csv")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
ENGINES = ("postgres", "sqlite")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
MAX_QUERY_CHARS = 16_384
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DEFAULTS: dict[str, Any] = {
    "format": "parquet",
    "compression_level": 0,
    "batch_size": 65_536,
    "max_attempts": 3,
    "row_group_rows": 262_144,
}


class ConfigError(ValueError):
    """A config problem, located: file, export and field."""

    def __init__(self, message: str, *, file: str = "", export: str = "", field: str = "") -> None:
        self.file, self.export, self.field, self.detail = file, export, field, message
        where = [
            p
            for p in (
                file,
                f"export {export!r}" if export else "",
                f"field {field!r}" if field else "",
            )
            if p
        ]
        super().__init__(": ".join([*where, message]))


# ---- the document's shape --------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _Source(_Strict):
    engine: str
    url_env: str = ""
    path: str = ""


class _Export(_Strict):
    name: str
    source: str | _Source
    table: str = ""
    query: str = ""
    columns: list[str] = Field(default_factory=list)
    mode: str = "full"
    chunk_column: str = ""
    chunk_size: int = Field(default=0, ge=0)
    chunk_count: int = Field(default=0, ge=0)
    format: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    destination: str | None = None
    batch_size: int | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    row_group_rows: int | None = Field(default=None, gt=0)


class _Defaults(_Strict):
    format: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    destination: str | None = None
    batch_size: int | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    row_group_rows: int | None = Field(default=None, gt=0)


class _Document(_Strict):
    version: Literal[1] = 1
    sources: dict[str, _Source] = Field(default_factory=dict)
    defaults: _Defaults = Field(default_factory=_Defaults)
    exports: list[_Export] = Field(min_length=1)


# ---- loading ----------------------------------------------------------------------------------


def load_file(path: str | Path, *, env: Mapping[str, str] | None = None) -> dict[str, ExportSpec]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", file=str(path)) from exc
    return load_text(text, base_dir=p.resolve().parent, file_name=str(path), env=env)


def load_text(
    text: str,
    *,
    base_dir: str | Path = ".",
    file_name: str = "<config>",
    env: Mapping[str, str] | None = None,
) -> dict[str, ExportSpec]:
    """Parse and check a config document; returns the exports by name, paths made absolute.
    With `env`, also checks that every url_env variable is set there."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{at}", file=file_name) from exc
    if not isinstance(raw, dict):
        raise ConfigError("the document must be a mapping with an 'exports' list", file=file_name)
    try:
        doc = _Document.model_validate(raw)
    except ValidationError as exc:
        raise _located(exc, raw, file_name) from None

    base = Path(base_dir)
    specs: dict[str, ExportSpec] = {}
    for item in doc.exports:
        where = {"file": file_name, "export": item.name}
        if item.name in specs:
            raise ConfigError("export name is used twice", field="name", **where)
        if isinstance(item.source, str):
            if item.source not in doc.sources:
                known = ", ".join(sorted(doc.sources)) or "none defined"
                raise ConfigError(
                    f"unknown source {item.source!r} (sources: {known})", field="source", **where
                )
            source = doc.sources[item.source]
        else:
            source = item.source

        def pick(name: str, item: _Export = item) -> Any:
            return _pick(item, doc.defaults, name)

        destination = pick("destination") or ""
        spec = ExportSpec(
            name=item.name,
            source=SourceSpec(
                engine=source.engine,
                url_env=source.url_env,
                path=str((base / source.path).resolve()) if source.path else "",
            ),
            table=item.table,
            query=item.query,
            columns=tuple(item.columns),
            mode=item.mode,
            chunk_column=item.chunk_column,
            chunk_size=item.chunk_size,
            chunk_count=item.chunk_count,
            format=pick("format"),
            compression=pick("compression") or "",
            compression_level=pick("compression_level"),
            destination=str((base / destination).resolve()) if destination else "",
            batch_size=pick("batch_size"),
            max_attempts=pick("max_attempts"),
            row_group_rows=pick("row_group_rows"),
        )
        specs[item.name] = check_spec(spec, env=env, file_name=file_name)
    return specs


def _pick(item: _Export, defaults: _Defaults, name: str) -> Any:
    """The export's own value, else the document's default, else the built-in default."""
    value = getattr(item, name)
    if value is None:
        value = getattr(defaults, name, None)
    return DEFAULTS.get(name) if value is None else value


def check_spec(
    spec: ExportSpec, *, env: Mapping[str, str] | None = None, file_name: str = ""
) -> ExportSpec:
    """Semantic checks shared by the config loader and Control.SubmitRun(spec).
    Returns the spec with defaults filled in."""

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(message, file=file_name, export=spec.name, field=field)

    if not spec.name or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", spec.name):
        raise fail("name", "must be 1-64 letters, digits, '_', '-' or '.'")
    fills = {k: v for k, v in DEFAULTS.items() if not getattr(spec, k)}
    if not spec.compression:
        fills["compression"] = "zstd" if spec.format in ("", "parquet") else "none"
    spec = replace(spec, **fills) if fills else spec
    src = spec.source
    if src.engine not in ENGINES:
        raise fail(
            "source.engine",
            f"unknown engine {src.engine!r} (expected one of: {', '.join(ENGINES)})",
        )
    if src.engine == "postgres":
        if not src.url_env:
            raise fail(
                "source.url_env",
                "is required: the name of the environment variable holding the URL",
            )
        if not ENV_NAME.fullmatch(src.url_env):
            raise fail("source.url_env", "must name an environment variable (not hold a URL)")
        if env is not None and not env.get(src.url_env):
            raise fail("source.url_env", f"environment variable {src.url_env} is not set")
    if src.engine == "sqlite":
        if not src.path:
            raise fail("source.path", "is required for sqlite")
        if env is not None and not Path(src.path).is_file():
            raise fail("source.path", f"no such database file: {src.path}")
    if bool(spec.table) == bool(spec.query):
        raise fail("table", "exactly one of 'table' or 'query' is required")
    if len(spec.query) > MAX_QUERY_CHARS:
        # the spec travels in events, and events stay small
        raise fail("query", f"at most {MAX_QUERY_CHARS} characters")
    if spec.table and not IDENT.fullmatch(spec.table):
        raise fail("table", f"{spec.table!r} is not a table name ([schema.]name)")
    for col in spec.columns:
        if not IDENT.fullmatch(col) or "." in col:
            raise fail("columns", f"{col!r} is not a column name")
    if spec.mode not in MODES:
        raise fail("mode", f"unknown mode {spec.mode!r} (expected one of: {', '.join(MODES)})")
    if spec.mode == "chunked":
        if not spec.chunk_column:
            raise fail("chunk_column", "is required in chunked mode")
        if not IDENT.fullmatch(spec.chunk_column) or "." in spec.chunk_column:
            raise fail("chunk_column", f"{spec.chunk_column!r} is not a column name")
        if bool(spec.chunk_size) == bool(spec.chunk_count):
            raise fail("chunk_size", "chunked mode needs exactly one of chunk_size or chunk_count")
        if spec.chunk_count > 100_000:
            raise fail("chunk_count", "at most 100000 chunks")
    elif spec.chunk_column or spec.chunk_size or spec.chunk_count:
        raise fail("mode", "chunk_column/chunk_size/chunk_count need mode 'chunked'")
    if spec.format not in FORMATS:
        raise fail(
            "format", f"unknown format {spec.format!r} (expected one of: {', '.join(FORMATS)})"
        )
    if spec.compression not in COMPRESSIONS:
        raise fail(
            "compression",
            f"unknown compression {spec.compression!r} "
            f"(expected one of: {', '.join(COMPRESSIONS)})",
        )
    if spec.format == "csv" and spec.compression not in ("none", "gzip"):
        raise fail("compression", "csv supports 'none' or 'gzip'")
    if not spec.destination:
        raise fail("destination", "is required (here or under 'defaults')")
    if not Path(spec.destination).is_absolute():
        raise fail("destination", "must be an absolute path")
    return spec


def select(specs: Mapping[str, ExportSpec], name: str | None, *, file_name: str = "") -> ExportSpec:
    """Pick one export by name; the only one when `name` is empty."""
    if name:
        if name not in specs:
            raise ConfigError(
                f"no export named {name!r} (exports: {', '.join(sorted(specs))})",
                file=file_name,
                export=name,
            )
        return specs[name]
    if len(specs) != 1:
        raise ConfigError(
            f"the config has {len(specs)} exports ({', '.join(sorted(specs))}): name one",
            file=file_name,
        )
    return next(iter(specs.values()))


def _located(exc: ValidationError, raw: dict[str, Any], file_name: str) -> ConfigError:
    """The first pydantic error, as file / export / field."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    export = ""
    if len(loc) >= 2 and loc[0] == "exports" and isinstance(loc[1], int):
        items = raw.get("exports") or []
        item = items[loc[1]] if loc[1] < len(items) else {}
        export = (item.get("name") if isinstance(item, dict) else None) or f"#{loc[1] + 1}"
        loc = loc[2:]
    # drop pydantic's union-branch tags (e.g. 'str', '_Source')
    field = ".".join(
        str(p) for p in loc if not ((isinstance(p, str) and p[:1].isupper()) or p in ("str",))
    )
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "is required"
    else:
        message = err["msg"]
    return ConfigError(message, file=file_name, export=export, field=field)


def resolve_url(spec: ExportSpec, env: Mapping[str, str] | None = None) -> str:
    """The connection URL, read from the environment at the last moment. Never log it."""
    src = spec.source
    if src.engine == "sqlite":
        return src.path
    value = (env if env is not None else os.environ).get(src.url_env, "")
    if not value:
        raise ConfigError(
            f"environment variable {src.url_env} is not set",
            export=spec.name,
            field="source.url_env",
        )
    return value
