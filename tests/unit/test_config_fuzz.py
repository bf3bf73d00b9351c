"""The config loader under fuzz: any input gives specs or one located ConfigError, never a crash.

Two families of documents: (a) arbitrary text and bytes, biased towards YAML syntax (anchors,
tags, deep nesting, huge integers, NUL, surrogates); (b) configs built from the real schema in
which one field of one export (or of the defaults, or a source) is given a random value or
removed. For (b) the error must name the file, the export at fault and the field.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluiceway.common.config import ConfigError, load_file, load_text

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FILE = "fuzz.yaml"
ENV = {"SHOP_URL": "postgresql://u:p@127.0.0.1/db"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cfg")
    (base / "demo.db").touch()
    return base


def _loads_or_located(text: str, base_dir: Path, env: dict[str, str] | None) -> ConfigError | None:
    """The property every input must satisfy; returns the error, if any, for further checks."""
    try:
        specs = load_text(text, base_dir=base_dir, file_name=FILE, env=env)
    except ConfigError as exc:
        message = str(exc)
        assert exc.file == FILE and message.startswith(f"{FILE}: "), message
        assert "\n" not in message and len(message) < 2000, message
        return exc
    assert specs, "a loaded config has at least one export"
    for name, spec in specs.items():
        assert spec.name == name and Path(spec.destination).is_absolute()
        # every accepted value fits its wire type (the spec travels in protobuf events)
        assert 0 <= spec.chunk_size < 2**63 and 0 <= spec.chunk_count <= 100_000
        assert 0 < spec.batch_size < 2**31 and 0 < spec.row_group_rows < 2**63
        assert -(2**31) <= spec.compression_level < 2**31 and 1 <= spec.max_attempts <= 10
        for text_field in (spec.query, spec.destination, spec.source.path):
            text_field.encode("utf-8")  # no lone surrogates
    return None


# ---- (a) arbitrary text -------------------------------------------------------------------

YAML_BITS = [
    "exports:",
    "sources:",
    "defaults:",
    "version: 1",
    "- ",
    "  ",
    "\n",
    "\n  - ",
    "{",
    "}",
    "[",
    "]",
    ",",
    ": ",
    "? ",
    "&a ",
    "*a",
    "<<: *a",
    "!!set ",
    "!!binary ",
    "!!python/object:os.system ",
    "!!timestamp 2001-02-30",
    "!!float ",
    "!!int ",
    "!!str ",
    "!!map ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "name: orders",
    "source: {engine: sqlite, path: demo.db}",
    "table: t",
    "destination: out",
    "mode: chunked",
    "chunk_size: ",
    "1" * 5000,
    "-9" * 20,
    ".inf",
    ".nan",
    "0x7fffffffffffffffff",
    '"\\ud800"',
    '"\\0"',
    "\x00",
    "\t",
    "\ufeff",
    "\u2028",
    "é✓😀",
    "[" * 400,
    "]" * 400,
    "{a: " * 200,
    "- " * 300,
    "'",
    '"',
    "#",
    "|\n",
    ">\n",
]


@FUZZ
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=8), max_size=40).map("".join),
    )
)
def test_any_text_loads_or_fails_with_a_located_config_error(base_dir: Path, text: str) -> None:
    _loads_or_located(text, base_dir, ENV)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.sampled_from(YAML_BITS), max_size=40).map(lambda p: "".join(p).encode()),
        st.lists(st.sampled_from(YAML_BITS), max_size=40).map(
            lambda p: "".join(p).encode("utf-16")
        ),
    )
)
def test_any_file_bytes_load_or_fail_with_a_located_config_error(
    base_dir: Path, data: bytes
) -> None:
    path = base_dir / "bytes.yaml"
    path.write_bytes(data)
    try:
        load_file(path, env=ENV)
    except ConfigError as exc:
        assert exc.file == str(path) and str(exc).startswith(f"{path}: ")
        assert "\n" not in str(exc)


def test_deep_nesting_and_huge_integers_are_config_errors(base_dir: Path) -> None:
    for text in ("[" * 5000 + "]" * 5000, "exports: " + "1" * 5000, "a: " * 3000 + "1"):
        assert _loads_or_located(text, base_dir, ENV) is not None


# ---- (b) the real schema, one field of one export given a random value ------------------------

EXPORT_FIELDS = [
    "name",
    "source",
    "table",
    "query",
    "columns",
    "mode",
    "chunk_column",
    "chunk_size",
    "chunk_count",
    "format",
    "compression",
    "compression_level",
    "destination",
    "batch_size",
    "max_attempts",
    "row_group_rows",
]
SOURCE_FIELDS = ["engine", "url_env", "path"]
DEFAULT_FIELDS = [
    "format",
    "compression",
    "compression_level",
    "destination",
    "batch_size",
    "max_attempts",
    "row_group_rows",
]
# a field's error may be reported on the field it conflicts with
RELATED: dict[str, set[str]] = {
    "table": {"query"},
    "query": {"table"},
    "chunk_size": {"chunk_count", "mode"},
    "chunk_count": {"chunk_size", "mode"},
    "chunk_column": {"mode"},
    "mode": {"chunk_column", "chunk_size", "chunk_count"},
    "format": {"compression"},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 100_001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=string.ascii_letters + "._$ ;'\"*>-", max_size=20),
    st.sampled_from(
        [
            "",
            "full",
            "chunked",
            "parquet",
            "csv",
            "zstd",
            "gzip",
            "none",
            "sqlite",
            "postgres",
            "public.orders",
            "id",
            "SHOP_URL",
            "NOT_SET",
            "postgresql://u:secret@h/db",
            "demo.db",
            "/abs/dir",
            "a\x00b",
            "\ud800",
            "é✓😀\u2028",
            "x" * 5000,
            "a/" * 2000,
            "SELECT 1",
            "SELECT " + "1," * 9000 + "1",
        ]
    ),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
MISSING = object()
values = st.one_of(junk, st.just(MISSING))


def _base(n_exports: int, inline: list[bool], chunked: list[bool]) -> dict[str, Any]:
    exports: list[dict[str, Any]] = []
    for i in range(n_exports):
        item: dict[str, Any] = {"name": f"e{i}", "table": f"public.t{i}"}
        item["source"] = (
            {"engine": "sqlite", "path": "demo.db"} if inline[i] else ("shop" if i % 2 else "demo")
        )
        if chunked[i]:
            item |= {"mode": "chunked", "chunk_column": "id", "chunk_size": 1000}
        if i == 2:
            item |= {"format": "csv", "compression": "gzip", "columns": ["id", "name"]}
        exports.append(item)
    return {
        "version": 1,
        "sources": {
            "shop": {"engine": "postgres", "url_env": "SHOP_URL"},
            "demo": {"engine": "sqlite", "path": "demo.db"},
        },
        "defaults": {"destination": "out", "batch_size": 1000},
        "exports": exports,
    }


def _set(target: dict[str, Any], key: str, value: object) -> None:
    if value is MISSING:
        target.pop(key, None)
    else:
        target[key] = value


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """A valid document with one thing changed; returns (doc, export at fault, field)."""
    n = draw(st.integers(1, 3))
    doc = _base(
        n,
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),
    )
    where = draw(st.sampled_from(["export", "export", "export", "inline", "defaults", "source"]))
    value = draw(values)
    if where in ("export", "inline"):
        i = draw(st.integers(0, n - 1))
        item = doc["exports"][i]
        if where == "inline":
            field = draw(st.sampled_from(SOURCE_FIELDS))
            item["source"] = {"engine": "sqlite", "path": "demo.db"}
            _set(item["source"], field, value)
            field = f"source.{field}"
        else:
            field = draw(st.sampled_from([*EXPORT_FIELDS, "extra_key"]))
            _set(item, field, value)
        name = item.get("name", MISSING)
        export = name if isinstance(name, str) and name else f"#{i + 1}"
        return doc, export, field
    if where == "defaults":
        field = draw(st.sampled_from([*DEFAULT_FIELDS, "extra_key"]))
        _set(doc["defaults"], field, value)
        return doc, "", field
    field = draw(st.sampled_from([*SOURCE_FIELDS, "extra_key"]))
    _set(doc["sources"][draw(st.sampled_from(["shop", "demo"]))], field, value)
    return doc, "", field


def _names_the_field(error: ConfigError, field: str) -> bool:
    top = field.split(".")[0]
    candidates = {field, top, *RELATED.get(top, ())}
    return any(error.field == c or error.field.startswith(c + ".") for c in candidates)


@FUZZ
@given(mutated_documents(), st.booleans())
def test_a_bad_field_is_refused_naming_the_file_the_export_and_the_field(
    base_dir: Path, case: tuple[dict[str, Any], str, str], with_env: bool
) -> None:
    doc, export, field = case
    text = yaml.safe_dump(doc, allow_unicode=True)
    error = _loads_or_located(text, base_dir, ENV if with_env else None)
    if error is None:
        return
    if export:  # one export was changed: the error is about it, and names it
        assert error.export == export and f"{FILE}: export " in str(error), str(error)
        assert _names_the_field(error, field), (field, str(error))
    else:  # defaults or a shared source: the field is named (and the export it breaks)
        assert error.field, str(error)
        assert field in error.field or error.field.split(".")[-1] in (field, *SOURCE_FIELDS), (
            field,
            str(error),
        )
