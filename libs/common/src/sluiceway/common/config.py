"""YAML config: several exports per file, credentials only through environment variables.

Every error names the file, the export and the field, on one line:
    exports.yaml: export 'orders': field 'mode': unknown mode 'fulll' (expected one of: ...)
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluiceway.common import fileopts, tuning
from sluiceway.common.destination import is_object_store, url_problem
from sluiceway.common.domain import schedule
from sluiceway.common.domain.events import (
    CHUNK_BY_KEYS,
    CHUNK_BY_PAGES,
    PRIORITIES,
    ExportSpec,
    QualityRules,
    ScheduleSpec,
    SourceSpec,
    is_chunked,
)

MODES = ("full", "chunked", "incremental", "time_window")


SCHEMA_POLICIES = ("warn", "continue", "fail")
MAX_DAYS = 36_600
FORMATS = ("parquet", "csv")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
ENGINES = ("postgres", "mysql", "sqlite")
URL_ENGINES = ("postgres", "mysql")
PARTITION_GRANULARITIES = (
    "",
    "day",
    "month",
    "year",
)  # sluiceway.common.partitions  # the URL comes from an environment variable
# libpq's sslmode values, weakest first, and the files a PostgreSQL source's TLS may name
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_FILES = ("sslrootcert", "sslcert", "sslkey")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
MAX_QUERY_CHARS = 16_384
MAX_PATH_CHARS = 4096
# The spec travels in RunRequested, PlanResolved and every chunk task; the task stream refuses
# messages over 64 KiB, so the spec's text (names, query, paths) is bounded well below that.
MAX_SPEC_BYTES = 32 * 1024
# A config document is a few kilobytes; the bound keeps parsing (and Control.SubmitRun) cheap.
MAX_CONFIG_CHARS = 1 << 20
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DEFAULTS: dict[str, Any] = {
    "format": "parquet",
    "compression_level": 0,
    "max_attempts": 3,
    "row_group_rows": 262_144,
}


# shape drift: a string column's longest value this many times the last commit's is a Warning
SHAPE_DRIFT_RATIO = 10
MAX_SHAPE_DRIFT_RATIO = 1000


def _partition_by(value: str | _PartitionBy | None) -> tuple[str, str]:
    """`partition_by: column` or `{column: ..., granularity: day|month|year}`: (column,
    granularity)."""
    if value is None:
        return "", ""
    if isinstance(value, str):
        return value, ""
    return value.column, value.granularity


def _cursor(value: str | list[str]) -> tuple[str, tuple[str, ...]]:
    """`cursor_column: updated_at` or `[updated_at, created_at]` (COALESCE of them, in order):
    (the column, its fallbacks)."""
    if isinstance(value, str):
        return value, ()
    return (value[0] if value else ""), tuple(value[1:])


def _row_hash(value: bool | list[str] | None) -> tuple[bool, tuple[str, ...]]:
    """`row_hash: true` (every exported source column) or `[a, b]` (those): (on, columns)."""
    if isinstance(value, list):
        return True, tuple(value)
    return bool(value), ()


def _or_default(value: int | None, default: int) -> int:
    """An explicit value (0 included: off) or the default."""
    return default if value is None else value


def _cut(text: str, limit: int = 80) -> str:
    """At most `limit` characters: error lines stay one short line whatever the input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: object, limit: int = 80) -> str:
    return _cut(repr(value), limit)


class ConfigError(ValueError):
    """A config problem, located: file, export and field."""

    def __init__(self, message: str, *, file: str = "", export: str = "", field: str = "") -> None:
        self.file, self.export, self.field, self.detail = file, export, field, message
        where = [
            p
            for p in (
                file,
                f"export {_show(export)}" if export else "",
                f"field {_show(field)}" if field else "",
            )
            if p
        ]
        if len(file) > 200:  # keep the end: the file's own name
            where[0] = "…" + file[-199:]
        if len(message) > 1000:
            message = message[:999] + "…"
        super().__init__(": ".join([*where, message]).replace("\n", " "))


# ---- the document's shape --------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _Source(_Strict):
    engine: str
    url_env: str = ""
    path: str = ""
    sslmode: str = ""
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""


class _Quality(_Strict):
    row_count_min: int = Field(default=0, ge=0)
    row_count_max: int = Field(default=0, ge=0)
    null_ratio_max: dict[str, float] = Field(default_factory=dict)
    unique_columns: list[str] = Field(default_factory=list)
    on_violation: str = "fail"


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
    chunk_by_days: int = Field(default=0, ge=0)
    chunk_by: str = ""
    chunk_columns: list[str] = Field(default_factory=list)  # chunk_by keys
    chunk_mb: int = Field(default=0, ge=0)
    cursor_column: str | list[str] = ""  # several: COALESCE(first, second, ...)
    time_column: str = ""
    days_window: int = Field(default=0, ge=0)
    schema_policy: str | None = None
    quality: _Quality | None = None
    query_file: str = ""
    format: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    destination: str | None = None
    batch_size: int | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    row_group_rows: int | None = Field(default=None, gt=0)
    compression_profile: str | None = None
    max_file_size: int | str | None = None  # bytes, or "256MB" / "1GiB"
    row_group_mb: int | None = Field(default=None, gt=0, le=fileopts.MAX_ROW_GROUP_MB)
    add_exported_at: bool | None = None
    skip_empty: bool | None = None
    shape_drift_ratio: int | None = Field(default=None, ge=0, le=MAX_SHAPE_DRIFT_RATIO)
    partition_by: str | _PartitionBy | None = None
    row_hash: bool | list[str] | None = None  # true: every source column; or the columns
    tuning_profile: str | None = None
    batch_size_memory_mb: int | None = Field(default=None, gt=0)
    statement_timeout_s: int | None = Field(default=None, gt=0)
    lock_timeout_s: int | None = Field(default=None, gt=0)
    connect_timeout_s: int | None = Field(default=None, gt=0)
    # scheduling (docs/config.md "Schedules and priorities")
    schedule: str | None = None
    timezone: str = ""
    enabled: bool = True
    catch_up: str = ""
    overlap: str = ""
    priority: str | int | None = None
    consistent_snapshot: bool | None = None


class _PartitionBy(_Strict):
    column: str
    granularity: str = ""


class _Defaults(_Strict):
    format: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    destination: str | None = None
    batch_size: int | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    row_group_rows: int | None = Field(default=None, gt=0)
    compression_profile: str | None = None
    max_file_size: int | str | None = None  # bytes, or "256MB" / "1GiB"
    row_group_mb: int | None = Field(default=None, gt=0, le=fileopts.MAX_ROW_GROUP_MB)
    add_exported_at: bool | None = None
    skip_empty: bool | None = None
    shape_drift_ratio: int | None = Field(default=None, ge=0, le=MAX_SHAPE_DRIFT_RATIO)
    row_hash: bool | None = None
    schema_policy: str | None = None
    quality: _Quality | None = None
    tuning_profile: str | None = None
    batch_size_memory_mb: int | None = Field(default=None, gt=0)
    statement_timeout_s: int | None = Field(default=None, gt=0)
    lock_timeout_s: int | None = Field(default=None, gt=0)
    connect_timeout_s: int | None = Field(default=None, gt=0)
    consistent_snapshot: bool | None = None


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
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}: {exc.reason})", file=str(path)
        ) from None
    return load_text(text, base_dir=p.resolve().parent, file_name=str(path), env=env)


def load_text(
    text: str,
    *,
    base_dir: str | Path = ".",
    query_file_bases: Sequence[str | Path] = (),
    file_name: str = "<config>",
    env: Mapping[str, str] | None = None,
    read_query_files: bool = True,
) -> dict[str, ExportSpec]:
    """Parse and check a config document; returns the exports by name, paths made absolute.
    With `env`, also checks that every url_env variable is set there. Without
    `read_query_files` (a document sent by a client), a `query_file` is refused: the file is
    the client's, and the server does not read files a client names."""
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"larger than {MAX_CONFIG_CHARS} characters", file=file_name)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{at}", file=file_name) from exc
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", file=file_name) from None
    except Exception as exc:
        # PyYAML's constructors raise plain ValueError/IndexError/... on some malformed scalars
        # ('!!float' with no value, an integer past Python's digit limit, a 30 February)
        raise ConfigError(f"not valid YAML ({type(exc).__name__})", file=file_name) from None
    if not isinstance(raw, dict):
        raise ConfigError("the document must be a mapping with an 'exports' list", file=file_name)
    try:
        doc = _Document.model_validate(raw)
    except ValidationError as exc:
        raise _located(exc, raw, file_name) from None
    except RecursionError:
        raise ConfigError("nested too deeply", file=file_name) from None

    base = Path(base_dir)
    specs: dict[str, ExportSpec] = {}
    for number, item in enumerate(doc.exports, start=1):
        where = {"file": file_name, "export": item.name or f"#{number}"}
        if item.name in specs:
            raise ConfigError("export name is used twice", field="name", **where)
        if isinstance(item.source, str):
            if item.source not in doc.sources:
                known = ", ".join(sorted(doc.sources)) or "none defined"
                raise ConfigError(
                    f"unknown source {_show(item.source)} (sources: {_cut(known, 200)})",
                    field="source",
                    **where,
                )
            source = doc.sources[item.source]
        else:
            source = item.source

        def pick(name: str, item: _Export = item) -> Any:
            return _pick(item, doc.defaults, name)

        destination = pick("destination") or ""
        cursor_column, cursor_fallbacks = _cursor(item.cursor_column)
        partition_column, partition_granularity = _partition_by(item.partition_by)
        row_hash, row_hash_columns = _row_hash(pick("row_hash"))
        spec = ExportSpec(
            name=item.name,
            source=SourceSpec(
                engine=source.engine,
                url_env=source.url_env,
                path=_absolute(base, source.path, field="source.path", **where),
                sslmode=source.sslmode,
                **{
                    key: _absolute(base, getattr(source, key), field=f"source.{key}", **where)
                    for key in TLS_FILES
                },
            ),
            table=item.table,
            query=_query_text(item, base, query_file_bases, read_query_files, **where),
            columns=tuple(item.columns),
            mode=item.mode,
            chunk_column=item.chunk_column,
            chunk_size=item.chunk_size,
            chunk_count=item.chunk_count,
            chunk_by_days=item.chunk_by_days,
            chunk_by=item.chunk_by,
            chunk_columns=tuple(item.chunk_columns),
            chunk_mb=item.chunk_mb,
            cursor_column=cursor_column,
            cursor_fallbacks=cursor_fallbacks,
            time_column=item.time_column,
            days_window=item.days_window,
            schema_policy=pick("schema_policy") or "warn",
            quality=_quality_rules(pick("quality")),
            format=pick("format"),
            compression=pick("compression") or "",
            compression_level=pick("compression_level"),
            destination=destination
            if is_object_store(destination)
            else _absolute(base, destination, field="destination", **where),
            batch_size=pick("batch_size") or 0,
            max_attempts=pick("max_attempts"),
            row_group_rows=pick("row_group_rows"),
            compression_profile=pick("compression_profile") or "",
            max_file_bytes=_file_bytes(pick("max_file_size"), **where),
            row_group_mb=_row_group_mb(item, doc.defaults, **where),
            add_exported_at=bool(pick("add_exported_at")),
            skip_empty=bool(pick("skip_empty")),
            shape_drift_ratio=_or_default(pick("shape_drift_ratio"), SHAPE_DRIFT_RATIO),
            partition_column=partition_column,
            partition_granularity=partition_granularity,
            row_hash=row_hash,
            row_hash_columns=row_hash_columns,
            tuning_profile=pick("tuning_profile") or "",
            batch_size_memory_mb=pick("batch_size_memory_mb") or 0,
            statement_timeout_s=pick("statement_timeout_s") or 0,
            lock_timeout_s=pick("lock_timeout_s") or 0,
            connect_timeout_s=pick("connect_timeout_s") or 0,
            priority=_priority(item.priority, **where),
            schedule=_schedule(item, **where),
            consistent_snapshot=_consistent_snapshot(pick("consistent_snapshot"), item.chunk_by),
        )
        try:
            specs[item.name] = check_spec(spec, env=env, file_name=file_name)
        except ConfigError as exc:
            if exc.export:
                raise
            raise ConfigError(exc.detail, field=exc.field, **where) from None
    return specs


def _consistent_snapshot(value: bool | None, chunk_by: str) -> bool:
    """As configured; unset, on for page ranges (which need it) and off otherwise."""
    return chunk_by == CHUNK_BY_PAGES if value is None else value


def _priority(value: str | int | None, *, file: str, export: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in PRIORITIES.values():
        return value
    raise ConfigError(
        f"{_show(value)}: expected low, normal or high (or 1, 2, 3)",
        field="priority",
        file=file,
        export=export,
    )


def _schedule(item: _Export, *, file: str, export: str) -> ScheduleSpec | None:
    if item.schedule is None:
        for key in ("timezone", "catch_up", "overlap"):
            if getattr(item, key):
                raise ConfigError("needs 'schedule'", field=key, file=file, export=export)
        return None
    return ScheduleSpec(
        cron=item.schedule,
        timezone=item.timezone,
        enabled=item.enabled,
        catch_up=item.catch_up,
        overlap=item.overlap,
    )


def _absolute(base: Path, value: str, *, field: str, file: str, export: str) -> str:
    """`value` resolved against `base`; a path the OS cannot even look at is a ConfigError."""
    if not value:
        return ""
    problem = _path_problem(value)
    if problem is None:
        try:
            return str((base / value).resolve())
        except (OSError, ValueError) as exc:
            problem = f"not a usable path ({type(exc).__name__})"
        except RuntimeError:  # Python < 3.13 on a symlink loop
            problem = "not a usable path (symlink loop)"
    raise ConfigError(problem, file=file, export=export, field=field)


def _query_text(
    item: _Export, base: Path, bases: Sequence[str | Path], allowed: bool, *, file: str, export: str
) -> str:
    """`query`, or the text of `query_file`: a UTF-8 file of at most MAX_QUERY_CHARS characters
    that resolves (after '..' and every symlink) inside `base` (the config file's directory) or
    one of the explicitly allowed `bases`."""
    if not item.query_file:
        return item.query
    value = item.query_file

    def fail(message: str) -> ConfigError:
        return ConfigError(
            f"query file {_show(value)}: {message}", file=file, export=export, field="query_file"
        )

    if item.query or item.table:
        raise fail("'table', 'query' and 'query_file' are mutually exclusive: set only one")
    if not allowed:
        raise fail(
            "not read from a submitted document: submit the resolved export (`sluiceway run` does)"
        )
    if problem := _path_problem(value):
        raise fail(problem)
    try:
        roots = [base.resolve(), *(Path(b).resolve() for b in bases)]
        target = (base / value).resolve(strict=True)
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise fail(f"not a usable path ({type(exc).__name__})") from None
    if not any(target.is_relative_to(root) for root in roots):
        raise fail("resolves outside the config file's directory ('..', absolute path or symlink)")
    limit = 4 * MAX_QUERY_CHARS  # UTF-8 takes at most 4 bytes a character
    try:
        # O_NOFOLLOW: a symlink swapped in after resolve() is refused, not followed;
        # O_NONBLOCK: a FIFO cannot hang the loader (it is then refused as not a regular file)
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            data = b""
            while regular and len(data) <= limit and (block := os.read(fd, limit + 1)):
                data += block
        finally:
            os.close(fd)
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    if not regular:
        raise fail("not a regular file")
    if len(data) > limit:
        raise fail(f"larger than {MAX_QUERY_CHARS} characters")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if len(text) > MAX_QUERY_CHARS:
        raise fail(f"larger than {MAX_QUERY_CHARS} characters")
    if not text.strip():
        raise fail("is empty")
    return text


def _path_problem(value: str) -> str | None:
    if len(value) > MAX_PATH_CHARS:
        return f"at most {MAX_PATH_CHARS} characters"
    if "\x00" in value:
        return "contains a NUL character"
    if not _encodable(value):
        return "is not valid UTF-8 text (lone surrogate)"
    return None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pick(item: _Export, defaults: _Defaults, name: str) -> Any:
    """The export's own value, else the document's default, else the built-in default."""
    value = getattr(item, name)
    if value is None:
        value = getattr(defaults, name, None)
    return DEFAULTS.get(name) if value is None else value


def _file_bytes(value: int | str | None, *, file: str, export: str) -> int:
    """max_file_size as bytes (0: no limit); its range is checked by check_spec."""
    try:
        return 0 if value is None else fileopts.parse_size(value)
    except ValueError as exc:
        raise ConfigError(str(exc), file=file, export=export, field="max_file_size") from None


def _row_group_mb(item: _Export, defaults: _Defaults, *, file: str, export: str) -> int:
    """row_group_mb and row_group_rows are alternatives: the nearer level that sets either wins
    (an export's row_group_rows beats a default row_group_mb); one level may not set both."""
    for level in (item, defaults):
        if level.row_group_mb is not None and level.row_group_rows is not None:
            where = "" if level is item else "defaults."
            raise ConfigError(
                "set row_group_mb or row_group_rows, not both",
                file=file,
                export=export,
                field=f"{where}row_group_mb",
            )
        if level.row_group_mb is not None or level.row_group_rows is not None:
            return level.row_group_mb or 0
    return 0


def check_spec(
    spec: ExportSpec, *, env: Mapping[str, str] | None = None, file_name: str = ""
) -> ExportSpec:
    """Semantic checks shared by the config loader and Control.SubmitRun(spec).
    Returns the spec with defaults filled in."""

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(message, file=file_name, export=spec.name, field=field)

    if not spec.name or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", spec.name):
        raise fail("name", "must be 1-64 letters, digits, '_', '-' or '.'")
    # every value travels in protobuf events: strings must be UTF-8, integers fit their types
    for field, text in _texts(spec):
        if not _encodable(text):
            raise fail(field, "is not valid UTF-8 text (lone surrogate)")
    sizes: dict[str, int] = {}
    for field, text in _texts(spec):
        sizes[field] = sizes.get(field, 0) + len(text.encode("utf-8"))
    if sum(sizes.values()) > MAX_SPEC_BYTES:
        largest = max(sizes, key=lambda f: sizes[f])
        raise fail(
            largest,
            f"the export's names and text come to {sum(sizes.values())} bytes "
            f"(at most {MAX_SPEC_BYTES}); this field holds {sizes[largest]}",
        )
    fills = {k: v for k, v in DEFAULTS.items() if not getattr(spec, k)}
    if not spec.compression and not spec.compression_profile:
        fills["compression"] = "zstd" if spec.format in ("", "parquet") else "none"
    spec = replace(spec, **fills) if fills else spec
    try:  # the profile fills what is unset; explicit keys win (sluiceway.common.tuning)
        spec = tuning.resolve(spec)
    except tuning.TuningError as exc:
        raise fail(exc.field, str(exc)) from None
    for field, low, high in _INT_BOUNDS:
        value = getattr(spec, field)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(field, f"must be an integer from {low} to {high}")
    src = spec.source
    if src.engine not in ENGINES:
        raise fail(
            "source.engine",
            f"unknown engine {_show(src.engine)} (expected one of: {', '.join(ENGINES)})",
        )
    if src.engine in URL_ENGINES:
        if not src.url_env:
            raise fail(
                "source.url_env",
                "is required: the name of the environment variable holding the URL",
            )
        if not ENV_NAME.fullmatch(src.url_env):
            raise fail("source.url_env", "must name an environment variable (not hold a URL)")
        if env is not None and not env.get(src.url_env):
            raise fail("source.url_env", f"environment variable {_cut(src.url_env)} is not set")
    if src.engine == "mysql" and spec.consistent_snapshot:
        raise fail(
            "consistent_snapshot",
            "is PostgreSQL only (MySQL cannot share one snapshot between sessions; each chunk "
            "still reads its count and rows in one consistent snapshot); remove it",
        )
    if src.engine == "postgres":
        if src.sslmode and src.sslmode not in SSLMODES:
            raise fail(
                "source.sslmode",
                f"unknown mode {_show(src.sslmode)} (expected one of: {', '.join(SSLMODES)})",
            )
        if bool(src.sslcert) != bool(src.sslkey):
            raise fail(
                "source.sslcert" if not src.sslcert else "source.sslkey",
                "a client certificate needs both sslcert and sslkey",
            )
        if src.sslmode == "disable" and (src.sslrootcert or src.sslcert):
            raise fail("source.sslmode", "disable turns TLS off; drop sslrootcert/sslcert or TLS")
        if src.sslmode in ("allow", "prefer") and src.sslrootcert:
            raise fail(
                "source.sslmode",
                f"{src.sslmode} falls back to plaintext and never checks sslrootcert; "
                "use verify-full (or verify-ca)",
            )
        if env is not None:
            for key in TLS_FILES:
                path = getattr(src, key)
                if path and not _is_file(path):
                    raise fail(f"source.{key}", f"no such file: {_cut(path, 200)}")
    elif src.engine == "mysql":
        _check_mysql_tls(src, env, fail)
    elif any(getattr(src, key) for key in ("sslmode", *TLS_FILES)):
        raise fail(
            "source.sslmode", f"TLS settings are for postgres and mysql sources, not {src.engine}"
        )
    if src.engine == "sqlite":
        if spec.consistent_snapshot:
            raise fail(
                "consistent_snapshot",
                "is PostgreSQL only (an SQLite file has no exported snapshots); remove it",
            )
        if not src.path:
            raise fail("source.path", "is required for sqlite")
        if problem := _path_problem(src.path):
            raise fail("source.path", problem)
        if env is not None and not _is_file(src.path):
            raise fail("source.path", f"no such database file: {_cut(src.path, 200)}")
    if bool(spec.table) == bool(spec.query):
        raise fail("table", "exactly one of 'table' or 'query' is required")
    if len(spec.query) > MAX_QUERY_CHARS:
        # the spec travels in events, and events stay small
        raise fail("query", f"at most {MAX_QUERY_CHARS} characters")
    if spec.table and not IDENT.fullmatch(spec.table):
        raise fail("table", f"{_show(spec.table)} is not a table name ([schema.]name)")
    for col in spec.columns:
        if not IDENT.fullmatch(col) or "." in col:
            raise fail("columns", f"{_show(col)} is not a column name")
    if spec.partition_column or spec.partition_granularity:
        if not IDENT.fullmatch(spec.partition_column) or "." in spec.partition_column:
            raise fail("partition_by", f"{_show(spec.partition_column)} is not a column name")
        if spec.partition_granularity not in PARTITION_GRANULARITIES:
            raise fail(
                "partition_by.granularity",
                f"unknown granularity {_show(spec.partition_granularity)} (expected one of: "
                "day, month, year; or none for the column's own value)",
            )
        if spec.columns and spec.partition_column not in spec.columns:
            raise fail("partition_by", f"{spec.partition_column!r} is not one of the columns")
    if spec.row_hash_columns:
        _check_row_hash(spec, fail)
    if spec.mode not in MODES:
        raise fail("mode", f"unknown mode {_show(spec.mode)} (expected one of: {', '.join(MODES)})")
    if spec.chunk_by == CHUNK_BY_KEYS:
        _check_keys(spec, fail)
    elif spec.chunk_columns:
        raise fail("chunk_columns", "name the key of chunk_by: keys; set chunk_by: keys")
    elif spec.chunk_by or spec.chunk_mb:
        _check_pages(spec, fail)
    elif is_chunked(spec):
        if not spec.chunk_column and (spec.query or spec.chunk_by_days):
            raise fail(
                "chunk_column",
                "is required in chunked mode for a query or with chunk_by_days (a table is "
                "chunked on its single-column integer primary key when none is set)",
            )
        if spec.chunk_column and (
            not IDENT.fullmatch(spec.chunk_column) or "." in spec.chunk_column
        ):
            raise fail("chunk_column", f"{_show(spec.chunk_column)} is not a column name")
        days = spec.chunk_by_days
        if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 36_600:
            raise fail("chunk_by_days", "must be an integer from 1 to 36600 (days per chunk)")
        if sum(1 for n in (spec.chunk_size, spec.chunk_count, spec.chunk_by_days) if n) != 1:
            raise fail(
                "chunk_size",
                "chunked mode needs exactly one of chunk_size or chunk_count or chunk_by_days",
            )
        if spec.chunk_count > 100_000:
            raise fail("chunk_count", "at most 100000 chunks")
    elif spec.chunk_column or spec.chunk_size or spec.chunk_count or spec.chunk_by_days:
        raise fail(
            "mode",
            "chunk_column/chunk_size/chunk_count/chunk_by_days need mode 'chunked' (or, with "
            "chunk_column, mode 'incremental' or 'time_window')",
        )
    _check_row_modes(spec, fail)
    _check_quality(spec, fail)
    if spec.priority not in (0, *PRIORITIES.values()):
        raise fail("priority", "expected low, normal or high (1, 2, 3)")
    if spec.schedule is not None:
        try:
            spec = replace(spec, schedule=schedule.check_schedule(spec.schedule))
        except schedule.ScheduleError as exc:
            raise fail(exc.field, exc.detail) from None
    if spec.schema_policy not in ("", *SCHEMA_POLICIES):
        raise fail(
            "schema_policy",
            f"unknown policy {_show(spec.schema_policy)} "
            f"(expected one of: {', '.join(SCHEMA_POLICIES)})",
        )
    if spec.format not in FORMATS:
        raise fail(
            "format", f"unknown format {_show(spec.format)} (expected one of: {', '.join(FORMATS)})"
        )
    if spec.compression_profile:
        if spec.compression_profile not in fileopts.PROFILE_NAMES:
            raise fail(
                "compression_profile",
                f"unknown profile {_show(spec.compression_profile)} "
                f"(expected one of: {', '.join(fileopts.PROFILE_NAMES)})",
            )
        codec, level = fileopts.resolve_compression(
            spec.format, spec.compression_profile, spec.compression, spec.compression_level
        )
        spec = replace(spec, compression=codec, compression_level=level)
    if spec.compression not in COMPRESSIONS:
        raise fail(
            "compression",
            f"unknown compression {_show(spec.compression)} "
            f"(expected one of: {', '.join(COMPRESSIONS)})",
        )
    if spec.format == "csv" and spec.compression not in fileopts.CSV_CODECS:
        raise fail(
            "compression",
            f"csv supports 'none' or 'gzip' (a gzip stream), not {_show(spec.compression)}: "
            "the other codecs are Parquet's",
        )
    if problem := fileopts.level_problem(spec.compression, spec.compression_level):
        raise fail("compression_level", problem)
    if problem := fileopts.size_problem(spec.max_file_bytes):
        raise fail("max_file_size", problem)
    if not 0 <= spec.row_group_mb <= fileopts.MAX_ROW_GROUP_MB:
        raise fail("row_group_mb", f"must be from 1 to {fileopts.MAX_ROW_GROUP_MB} (MB)")
    if not spec.destination:
        raise fail("destination", "is required (here or under 'defaults')")
    if problem := _path_problem(spec.destination):
        raise fail("destination", problem)
    if is_object_store(spec.destination):
        if problem := url_problem(spec.destination):
            raise fail("destination", problem)
    elif not Path(spec.destination).is_absolute():
        raise fail("destination", "must be an absolute path or s3://bucket/prefix")
    return spec


def _quality_rules(q: _Quality | None) -> QualityRules | None:
    if q is None:
        return None
    return QualityRules(
        row_count_min=q.row_count_min,
        row_count_max=q.row_count_max,
        null_ratio_max=dict(q.null_ratio_max),
        unique_columns=tuple(q.unique_columns),
        on_violation=q.on_violation,
    )


def _check_quality(spec: ExportSpec, fail: Callable[[str, str], ConfigError]) -> None:
    q = spec.quality
    if q is None:
        return
    if q.on_violation not in ("", "fail", "warn"):
        raise fail("quality.on_violation", f"{_show(q.on_violation)}: expected 'fail' or 'warn'")
    for name in ("row_count_min", "row_count_max"):
        value = getattr(q, name)
        if not 0 <= value <= INT64_MAX:
            raise fail(f"quality.{name}", "must be an integer from 0")
    if q.row_count_max and q.row_count_min > q.row_count_max:
        raise fail("quality.row_count_min", "is above quality.row_count_max")
    for column, ratio in q.null_ratio_max.items():
        if not IDENT.fullmatch(column) or "." in column:
            raise fail("quality.null_ratio_max", f"{_show(column)} is not a column name")
        if not (isinstance(ratio, float | int) and 0.0 <= ratio <= 1.0):
            raise fail(f"quality.null_ratio_max.{column}", "must be a share from 0 to 1")
    for column in q.unique_columns:
        if not IDENT.fullmatch(column) or "." in column:
            raise fail("quality.unique_columns", f"{_show(column)} is not a column name")
    if len(q.null_ratio_max) + len(q.unique_columns) > 256:
        raise fail("quality", "at most 256 column rules")


def _check_row_modes(spec: ExportSpec, fail: Callable[[str, str], ConfigError]) -> None:
    """incremental needs a cursor_column, time_window a time_column and days_window; neither
    key belongs to another mode. The run's row filter is the planner's, never a client's."""
    if spec.row_filter is not None:
        raise fail("row_filter", "is set by the planner for each run, not by a config or client")
    wanted = {
        "incremental": ("cursor_column",),
        "time_window": ("time_column", "days_window"),
    }.get(spec.mode, ())
    for name in ("cursor_column", "time_column", "days_window"):
        value = getattr(spec, name)
        if value and name not in wanted:
            mode = "incremental" if name == "cursor_column" else "time_window"
            raise fail(name, f"needs mode {mode!r} (the export's mode is {_show(spec.mode)})")
        if name in wanted and not value:
            raise fail(name, f"is required in {spec.mode} mode")
    for name, value in (
        *(("cursor_column", c) for c in (spec.cursor_column, *spec.cursor_fallbacks)),
        ("time_column", spec.time_column),
    ):
        if value and (not IDENT.fullmatch(value) or "." in value):
            raise fail(name, f"{_show(value)} is not a column name")
    cursor = (spec.cursor_column, *spec.cursor_fallbacks)
    if spec.cursor_fallbacks and (len(set(cursor)) != len(cursor) or not all(cursor)):
        raise fail("cursor_column", "lists a column twice, or an empty one")
    if spec.days_window and not 1 <= spec.days_window <= MAX_DAYS:
        raise fail("days_window", f"must be an integer from 1 to {MAX_DAYS} (days)")


MYSQL_SSLMODES = ("disable", "require", "verify-ca", "verify-full")


def _check_mysql_tls(
    src: SourceSpec, env: Mapping[str, str] | None, fail: Callable[[str, str], ConfigError]
) -> None:
    """A mysql source's TLS: sslmode and the CA that verifies the server (no client
    certificate: the reader cannot present one)."""
    if src.sslmode and src.sslmode not in MYSQL_SSLMODES:
        raise fail(
            "source.sslmode",
            f"unknown mode {_show(src.sslmode)} for mysql (expected one of: "
            f"{', '.join(MYSQL_SSLMODES)})",
        )
    for key in ("sslcert", "sslkey"):
        if getattr(src, key):
            raise fail(f"source.{key}", "mysql sources take no client certificate; remove it")
    if src.sslmode in ("verify-ca", "verify-full") and not src.sslrootcert:
        raise fail(
            "source.sslrootcert",
            f"{src.sslmode} needs the CA file that signs the server's certificate",
        )
    if src.sslrootcert and src.sslmode not in ("verify-ca", "verify-full"):
        raise fail(
            "source.sslmode", "sslrootcert is only read with verify-ca or verify-full; set one"
        )
    if env is not None and src.sslrootcert and not _is_file(src.sslrootcert):
        raise fail("source.sslrootcert", f"no such file: {_cut(src.sslrootcert, 200)}")


def _check_row_hash(spec: ExportSpec, fail: Callable[[str, str], ConfigError]) -> None:
    """row_hash: [columns]: source column names, each once, among `columns` if it is set."""
    for col in spec.row_hash_columns:
        if not IDENT.fullmatch(col) or "." in col:
            raise fail("row_hash", f"{_show(col)} is not a column name")
        if col in fileopts.ADDED_COLUMNS:
            raise fail("row_hash", f"{col!r} is a column the export adds, not a source column")
        if spec.columns and col not in spec.columns:
            raise fail("row_hash", f"{col!r} is not one of the columns")
    if len(set(spec.row_hash_columns)) != len(spec.row_hash_columns):
        raise fail("row_hash", "names a column twice")


MAX_CHUNK_MB = 1 << 20  # 1 TiB of heap per chunk


def _check_keys(spec: ExportSpec, fail: Callable[[str, str], ConfigError]) -> None:
    """chunk_by: keys (docs/config-chunking.md): ranges of a key's tuples (chunk_columns, by
    default the table's primary key), each about chunk_size rows when planned."""
    if spec.mode != "chunked":
        raise fail("chunk_by", f"keys needs mode 'chunked' (the mode is {_show(spec.mode)})")
    for name in ("chunk_column", "chunk_by_days", "chunk_mb"):
        if getattr(spec, name):
            raise fail(name, "is not for chunk_by: keys (it takes chunk_columns, chunk_size)")
    if bool(spec.chunk_size) == bool(spec.chunk_count):
        raise fail("chunk_size", "chunk_by: keys needs one of chunk_size (rows) or chunk_count")
    for col in spec.chunk_columns:
        if not IDENT.fullmatch(col) or "." in col:
            raise fail("chunk_columns", f"{_show(col)} is not a column name")
    if len(set(spec.chunk_columns)) != len(spec.chunk_columns):
        raise fail("chunk_columns", "names a column twice")
    if spec.query and not spec.chunk_columns:
        raise fail("chunk_columns", "chunk_by: keys over a query needs chunk_columns")


def _check_pages(spec: ExportSpec, fail: Callable[[str, str], ConfigError]) -> None:
    """chunk_by: pages (docs/config-chunking.md): a PostgreSQL table read in ranges of heap
    pages, each by a TID range scan, all in the plan's exported snapshot."""
    if spec.chunk_by != CHUNK_BY_PAGES:
        if spec.chunk_by:
            raise fail("chunk_by", f"unknown {_show(spec.chunk_by)} (expected: pages or keys)")
        raise fail("chunk_mb", "sizes page ranges: it needs chunk_by: pages")
    if spec.mode != "chunked":
        raise fail("chunk_by", f"pages needs mode 'chunked' (the mode is {_show(spec.mode)})")
    if spec.source.engine != "postgres":
        raise fail("chunk_by", f"pages is for postgres sources, not {spec.source.engine}")
    if not spec.table:
        raise fail("chunk_by", "pages reads a table's heap: it needs 'table', not 'query'")
    for name in ("chunk_column", "chunk_size", "chunk_by_days"):
        if getattr(spec, name):
            raise fail(name, "is for key ranges; chunk_by: pages takes chunk_mb or chunk_count")
    if spec.chunk_mb and spec.chunk_count:
        raise fail("chunk_mb", "chunk_by: pages takes one of chunk_mb or chunk_count, not both")
    if not spec.chunk_mb and not spec.chunk_count:
        raise fail(
            "chunk_mb", "chunk_by: pages needs chunk_mb (MB of heap per chunk) or chunk_count"
        )
    if not 0 <= spec.chunk_mb <= MAX_CHUNK_MB:
        raise fail("chunk_mb", f"must be an integer from 1 to {MAX_CHUNK_MB} (MB per chunk)")
    if not spec.consistent_snapshot:
        # an UPDATE writes the new row version on another page: without one snapshot for every
        # chunk, a row updated during the run could be read twice or not at all
        raise fail(
            "consistent_snapshot",
            "chunk_by: pages needs consistent_snapshot (a row updated during the run can move "
            "to another page range); it is on unless set to false",
        )


# (field, lowest, highest) after defaults are filled: each fits its proto type and makes sense
_INT_BOUNDS = (
    ("chunk_size", 0, INT64_MAX),
    ("chunk_count", 0, 100_000),
    ("compression_level", -INT32_MAX - 1, INT32_MAX),
    ("batch_size", 1, INT32_MAX),
    ("max_attempts", 1, 10),
    ("row_group_rows", 1, INT64_MAX),
    ("days_window", 0, MAX_DAYS),
    ("shape_drift_ratio", 0, MAX_SHAPE_DRIFT_RATIO),
)


def _texts(spec: ExportSpec) -> list[tuple[str, str]]:
    fields = (
        "table",
        "query",
        "mode",
        "chunk_column",
        "chunk_by",
        "cursor_column",
        "time_column",
        "format",
        "compression",
        "destination",
    )
    return [
        *((f, getattr(spec, f)) for f in fields),
        ("source.engine", spec.source.engine),
        ("source.url_env", spec.source.url_env),
        ("source.path", spec.source.path),
        *((f"source.{k}", getattr(spec.source, k)) for k in ("sslmode", *TLS_FILES)),
        *(("columns", c) for c in spec.columns),
    ]


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # e.g. a name longer than the OS allows
        return False


def select(specs: Mapping[str, ExportSpec], name: str | None, *, file_name: str = "") -> ExportSpec:
    """Pick one export by name; the only one when `name` is empty."""
    if name:
        if name not in specs:
            raise ConfigError(
                f"no export named {_show(name)} (exports: {_cut(', '.join(sorted(specs)), 200)})",
                file=file_name,
                export=name,
            )
        return specs[name]
    if len(specs) != 1:
        raise ConfigError(
            f"the config has {len(specs)} exports "
            f"({_cut(', '.join(sorted(specs)), 200)}): name one",
            file=file_name,
        )
    return next(iter(specs.values()))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (`_Source`, `str | _Source`, `dict[str, _Source]`...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _did_you_mean(loc: list[Any]) -> str:
    """' (did you mean 'X'?)' for an unknown key close to a field of the model it is in."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    model: type[BaseModel] | None = _Document
    for part in loc[:-1]:  # list indexes, dict keys and union tags are not fields: skipped
        if model is not None and isinstance(part, str) and part in model.model_fields:
            found = _models_in(model.model_fields[part].annotation)
            model = found[0] if found else None
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _located(exc: ValidationError, raw: dict[str, Any], file_name: str) -> ConfigError:
    """The first pydantic error, as file / export / field; an unknown key first, since a
    typo'd key also makes the field it meant missing (or a union branch fail)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(err["loc"])
    export = ""
    if len(loc) >= 2 and loc[0] == "exports" and isinstance(loc[1], int):
        # 'exports' may be any iterable pydantic accepts as a list (a YAML !!set, ...)
        items = raw.get("exports")
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        export = name if isinstance(name, str) and name else f"#{loc[1] + 1}"
        loc = loc[2:]
    # drop pydantic's union-branch tags (e.g. 'str', '_Source')
    field = ".".join(
        str(p)
        for p in loc
        if not ((isinstance(p, str) and (p[:1].isupper() or p[:1] == "_")) or p in ("str",))
    )
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown field" + _did_you_mean(list(err["loc"]))
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
