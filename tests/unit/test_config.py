"""The config loader: one located line per error, credentials only by variable name."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common.config import ConfigError, load_file, load_text, select

GOOD = """
sources:
  shop: {engine: postgres, url_env: SHOP_URL}
  demo: {engine: sqlite, path: demo.db}
defaults:
  destination: out
exports:
  - name: orders
    source: shop
    table: public.orders
    mode: chunked
    chunk_column: id
    chunk_size: 1000
  - name: customers
    source: demo
    table: customers
"""


def _err(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text, base_dir="/base", file_name="x.yaml", env=env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_config_gives_every_export_with_defaults_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "demo.db").touch()
    specs = load_text(GOOD, base_dir=tmp_path, env={"SHOP_URL": "postgresql://u:p@h/db"})
    assert set(specs) == {"orders", "customers"}
    orders = specs["orders"]
    assert orders.format == "parquet" and orders.compression == "zstd"
    assert orders.destination == str(tmp_path / "out")
    assert orders.source.url_env == "SHOP_URL"
    assert specs["customers"].source.path == str(tmp_path / "demo.db")


def test_the_spec_never_holds_the_url(tmp_path: Path) -> None:
    (tmp_path / "demo.db").touch()
    specs = load_text(GOOD, base_dir=tmp_path, env={"SHOP_URL": "postgresql://u:secretpw@h/db"})
    assert "secretpw" not in repr(specs)


def test_an_unknown_mode_names_export_and_field() -> None:
    message = _err(GOOD.replace("mode: chunked", "mode: fulll"))
    assert message.startswith("x.yaml: export 'orders': field 'mode': unknown mode 'fulll'")


def test_a_missing_table_names_export_and_field() -> None:
    message = _err(GOOD.replace("    table: customers\n", ""))
    assert "export 'customers'" in message and "field 'table'" in message


def test_an_unset_credentials_variable_names_it() -> None:
    message = _err(GOOD, env={})
    assert "export 'orders'" in message and "SHOP_URL is not set" in message


def test_a_url_in_url_env_is_refused() -> None:
    message = _err(GOOD.replace("url_env: SHOP_URL", "url_env: 'postgresql://u:p@h/db'"))
    assert "must name an environment variable" in message


def test_a_postgres_sources_tls_settings_reach_the_spec_with_absolute_paths(
    tmp_path: Path,
) -> None:
    (tmp_path / "demo.db").touch()
    (tmp_path / "ca.crt").touch()
    text = GOOD.replace(
        "url_env: SHOP_URL}", "url_env: SHOP_URL, sslmode: verify-full, sslrootcert: ca.crt}"
    )
    specs = load_text(text, base_dir=tmp_path, env={"SHOP_URL": "postgresql://u@h/db"})
    source = specs["orders"].source
    assert (source.sslmode, source.sslrootcert) == ("verify-full", str(tmp_path / "ca.crt"))
    assert specs["customers"].source.sslmode == ""


@pytest.mark.parametrize(
    ("tls", "field", "says"),
    [
        ("sslmode: verify-everything", "source.sslmode", "unknown mode 'verify-everything'"),
        ("sslmode: verify-full, sslcert: c.crt", "source.sslkey", "needs both sslcert and sslkey"),
        ("sslmode: verify-full, sslkey: c.key", "source.sslcert", "needs both sslcert and sslkey"),
        ("sslmode: prefer, sslrootcert: ca.crt", "source.sslmode", "falls back to plaintext"),
        ("sslmode: disable, sslrootcert: ca.crt", "source.sslmode", "turns TLS off"),
        ("sslmode: verify-full, sslrootcert: nope.crt", "source.sslrootcert", "no such file"),
    ],
)
def test_a_wrong_tls_setting_is_named(tls: str, field: str, says: str) -> None:
    message = _err(
        GOOD.replace("url_env: SHOP_URL}", f"url_env: SHOP_URL, {tls}}}"),
        env={"SHOP_URL": "postgresql://u@h/db"},
    )
    assert f"export 'orders': field '{field}'" in message and says in message


def test_tls_settings_on_an_sqlite_source_are_refused() -> None:
    message = _err(GOOD.replace("path: demo.db}", "path: demo.db, sslmode: require}"))
    assert (
        "field 'source.sslmode'" in message
        and "for postgres and mysql sources, not sqlite" in message
    )


def test_an_unknown_field_is_named() -> None:
    message = _err(GOOD.replace("chunk_size: 1000", "chunk_size: 1000\n    chunk_sise: 5"))
    assert "export 'orders': field 'chunk_sise': unknown field" in message


@pytest.mark.parametrize(
    ("typo", "where", "meant"),
    [
        (
            ("chunk_size: 1000", "chunk_sise: 1000"),
            "export 'orders': field 'chunk_sise'",
            "chunk_size",
        ),
        (("url_env: SHOP_URL", "url_evn: SHOP_URL"), "field 'sources.shop.url_evn'", "url_env"),
        (("destination: out", "destinaton: out"), "field 'defaults.destinaton'", "destination"),
        (("  - name: customers", "  - nmae: customers"), "export '#2': field 'nmae'", "name"),
        (
            ("    source: demo\n", "    source: {engine: sqlite, paht: demo.db}\n"),
            "export 'customers': field 'source.paht'",
            "path",
        ),
    ],
)
def test_a_typod_key_is_named_with_the_field_it_meant(
    typo: tuple[str, str], where: str, meant: str
) -> None:
    message = _err(GOOD.replace(*typo))
    assert f"{where}: unknown field (did you mean {meant!r}?)" in message


def test_an_unknown_key_far_from_every_field_gets_no_guess() -> None:
    message = _err(GOOD.replace("chunk_size: 1000", "chunk_size: 1000\n    xyzzy: 1"))
    assert message.endswith("field 'xyzzy': unknown field")


def test_a_wrong_type_is_named() -> None:
    message = _err(GOOD.replace("chunk_size: 1000", "chunk_size: many"))
    assert "export 'orders': field 'chunk_size'" in message


def test_chunked_needs_one_of_size_or_count() -> None:
    message = _err(GOOD.replace("chunk_size: 1000", "chunk_size: 1000\n    chunk_count: 4"))
    assert "exactly one of chunk_size or chunk_count" in message


def test_an_unknown_source_is_named() -> None:
    assert "unknown source 'nope'" in _err(GOOD.replace("source: shop", "source: nope"))


def test_a_table_name_that_is_not_an_identifier_is_refused() -> None:
    assert "field 'table'" in _err(GOOD.replace("public.orders", "'orders; drop table x'"))


def test_csv_defaults_to_no_compression_and_refuses_zstd() -> None:
    csv = GOOD.replace("    table: customers\n", "    table: customers\n    format: csv\n")
    assert load_text(csv, base_dir="/base")["customers"].compression == "none"
    bad = csv.replace("format: csv", "format: csv\n    compression: zstd")
    assert "field 'compression': csv supports 'none' or 'gzip'" in _err(bad)


def test_an_oversized_query_is_refused_by_name() -> None:
    text = GOOD.replace("    table: customers\n", f"    query: 'SELECT {'1,' * 9000}1'\n")
    assert "export 'customers': field 'query': at most" in _err(text)


def test_select_picks_by_name_or_the_only_one() -> None:
    specs = load_text(GOOD, base_dir="/base")
    assert select(specs, "orders").name == "orders"
    with pytest.raises(ConfigError, match="name one"):
        select(specs, None)
    with pytest.raises(ConfigError, match="no export named 'x'"):
        select(specs, "x")


def test_a_missing_sqlite_file_is_named() -> None:
    assert "field 'source.path': no such database file" in _err(GOOD, env={"SHOP_URL": "x"})


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_file(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line() -> None:
    assert "not valid YAML at line" in _err("exports: [\n  - {")


@settings(max_examples=1000, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "exports",
                        "name",
                        "source",
                        "table",
                        "mode",
                        "engine",
                        "path",
                        "url_env",
                        "chunk_size",
                        "chunk_column",
                        "sources",
                        "x",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_any_document_loads_or_fails_with_a_config_error(doc: object) -> None:
    import yaml

    try:
        load_text(yaml.safe_dump(doc), base_dir="/base", env={})
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_skip_empty_is_off_unless_set_and_an_exports_own_value_wins(tmp_path: Path) -> None:
    (tmp_path / "demo.db").touch()
    env = {"SHOP_URL": "postgresql://u@h/db"}
    assert not any(s.skip_empty for s in load_text(GOOD, base_dir=tmp_path, env=env).values())
    text = GOOD.replace("  destination: out\n", "  destination: out\n  skip_empty: true\n")
    text = text.replace("    table: customers\n", "    table: customers\n    skip_empty: false\n")
    specs = load_text(text, base_dir=tmp_path, env=env)
    assert specs["orders"].skip_empty and not specs["customers"].skip_empty
    bad = GOOD.replace("    table: customers\n", "    table: customers\n    skip_empty: maybe\n")
    assert "skip_empty" in _err(bad, env)


def test_row_hash_is_on_for_every_column_or_names_its_columns(tmp_path: Path) -> None:
    (tmp_path / "demo.db").touch()
    text = GOOD.replace("defaults:\n", "defaults:\n  row_hash: true\n").replace(
        "    table: customers\n", "    table: customers\n    row_hash: [name, email]\n"
    )
    specs = load_text(text, base_dir=tmp_path, env={"SHOP_URL": "postgresql://u:p@h/db"})
    assert specs["orders"].row_hash and specs["orders"].row_hash_columns == ()
    assert specs["customers"].row_hash and specs["customers"].row_hash_columns == ("name", "email")
    off = load_text(GOOD, base_dir=tmp_path, env={"SHOP_URL": "postgresql://u:p@h/db"})
    assert not off["orders"].row_hash


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[name, name]", "names a column twice"),
        ("[_exported_at]", "'_exported_at' is a column the export adds"),
        ("['a b']", "'a b' is not a column name"),
        ("[email]", "'email' is not one of the columns"),
        ("maybe", "row_hash"),
    ],
)
def test_a_wrong_row_hash_is_named(value: str, says: str) -> None:
    text = GOOD.replace(
        "    table: customers\n",
        f"    table: customers\n    columns: [id, name]\n    row_hash: {value}\n",
    )
    message = _err(text)
    assert "export 'customers'" in message and "row_hash" in message and says in message, message


MYSQL_TLS = """
sources:
  shop: {engine: mysql, url_env: SHOP_URL, %s}
exports:
  - {name: orders, source: shop, table: orders, destination: out}
"""


def test_a_mysql_source_takes_sslmode_and_the_ca(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").touch()
    specs = load_text(
        MYSQL_TLS % "sslmode: verify-full, sslrootcert: ca.crt",
        base_dir=tmp_path,
        env={"SHOP_URL": "mysql://u:p@h/db"},
    )
    source = specs["orders"].source
    assert (source.sslmode, source.sslrootcert) == ("verify-full", str(tmp_path / "ca.crt"))


@pytest.mark.parametrize(
    ("tls", "field", "says"),
    [
        ("sslmode: prefer", "source.sslmode", "unknown mode 'prefer' for mysql"),
        ("sslmode: verify-ca", "source.sslrootcert", "needs the CA file"),
        ("sslmode: require, sslrootcert: ca.crt", "source.sslmode", "only read with verify-ca"),
        ("sslcert: c.crt, sslkey: c.key", "source.sslcert", "take no client certificate"),
    ],
)
def test_a_wrong_mysql_tls_setting_is_named(tls: str, field: str, says: str) -> None:
    message = _err(MYSQL_TLS % tls)
    assert f"field {field!r}" in message and says in message, message
