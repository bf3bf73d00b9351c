"""query_file: a SQL file beside the config, read at load time, that cannot escape its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluiceway.common.config import MAX_QUERY_CHARS, ConfigError, load_file, load_text

SQL = "SELECT id, total FROM orders WHERE placed >= date '2026-01-01'\n"


def _doc(query_file: str, **extra: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    return (
        "sources:\n"
        "  shop: {engine: postgres, url_env: SHOP_URL}\n"
        "exports:\n"
        "  - name: recent\n"
        "    source: shop\n"
        f"    query_file: {query_file!r}\n"
        "    destination: out\n" + lines
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config folder with sql/orders_recent.sql in it, and a secret file outside it."""
    folder = tmp_path / "conf"
    (folder / "sql").mkdir(parents=True)
    (folder / "sql" / "orders_recent.sql").write_text(SQL, encoding="utf-8")
    (tmp_path / "outside.sql").write_text("SELECT 'secret'", encoding="utf-8")
    return folder


def _load(conf: Path, text: str) -> dict[str, object]:
    path = conf / "exports.yaml"
    path.write_text(text, encoding="utf-8")
    return dict(load_file(path))


def _error(conf: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(conf, text)
    err = info.value
    assert "\n" not in str(err)
    assert err.export == "recent" and err.field == "query_file"
    assert str(err).startswith(f"{conf / 'exports.yaml'}: export 'recent': field 'query_file': ")
    return err


def test_the_query_file_is_read_into_the_query(conf: Path) -> None:
    spec = _load(conf, _doc("sql/orders_recent.sql"))["recent"]
    assert spec.query == SQL and spec.table == ""  # type: ignore[attr-defined]


def test_an_absolute_path_inside_the_config_folder_is_allowed(conf: Path) -> None:
    spec = _load(conf, _doc(str(conf / "sql" / "orders_recent.sql")))["recent"]
    assert spec.query == SQL  # type: ignore[attr-defined]


def test_dot_dot_out_of_the_config_folder_is_refused(conf: Path) -> None:
    err = _error(conf, _doc("../outside.sql"))
    assert "'../outside.sql'" in str(err) and "outside the config file's directory" in str(err)
    assert "secret" not in str(err)


def test_a_dot_dot_that_comes_back_inside_is_allowed(conf: Path) -> None:
    spec = _load(conf, _doc(f"../{conf.name}/sql/orders_recent.sql"))["recent"]
    assert spec.query == SQL  # type: ignore[attr-defined]


def test_an_absolute_path_outside_is_refused(conf: Path) -> None:
    err = _error(conf, _doc(str(conf.parent / "outside.sql")))
    assert "outside the config file's directory" in str(err)
    err = _error(conf, _doc("/etc/hostname"))
    assert "outside the config file's directory" in str(err) or "no such file" in str(err)


def test_a_symlink_escaping_the_folder_is_refused(conf: Path) -> None:
    (conf / "sql" / "link.sql").symlink_to(conf.parent / "outside.sql")
    err = _error(conf, _doc("sql/link.sql"))
    assert "outside the config file's directory" in str(err)
    (conf / "escape").symlink_to(conf.parent, target_is_directory=True)
    err = _error(conf, _doc("escape/outside.sql"))
    assert "outside the config file's directory" in str(err)


def test_a_symlink_that_stays_inside_is_followed(conf: Path) -> None:
    (conf / "current.sql").symlink_to(conf / "sql" / "orders_recent.sql")
    assert _load(conf, _doc("current.sql"))["recent"].query == SQL  # type: ignore[attr-defined]


def test_an_explicitly_allowed_base_may_hold_the_file(conf: Path, tmp_path: Path) -> None:
    text = _doc(str(tmp_path / "outside.sql"))
    with pytest.raises(ConfigError, match="outside the config file's directory"):
        load_text(text, base_dir=conf, file_name="x.yaml")
    specs = load_text(text, base_dir=conf, file_name="x.yaml", query_file_bases=[tmp_path])
    assert specs["recent"].query == "SELECT 'secret'"


def test_a_missing_file_names_the_file(conf: Path) -> None:
    err = _error(conf, _doc("sql/nope.sql"))
    assert "'sql/nope.sql'" in str(err) and "no such file" in str(err)


def test_a_file_too_big_is_refused(conf: Path) -> None:
    (conf / "big.sql").write_text("SELECT 1" + " " * MAX_QUERY_CHARS, encoding="utf-8")
    assert f"larger than {MAX_QUERY_CHARS} characters" in str(_error(conf, _doc("big.sql")))
    fits = "SELECT '" + "x" * (MAX_QUERY_CHARS - 9) + "'"
    assert len(fits) == MAX_QUERY_CHARS
    (conf / "fits.sql").write_text(fits, encoding="utf-8")
    assert _load(conf, _doc("fits.sql"))["recent"].query == fits  # type: ignore[attr-defined]
    # counted in characters, not bytes
    wide = "SELECT '" + "é" * 9000 + "'"
    assert len(wide.encode()) > MAX_QUERY_CHARS
    (conf / "wide.sql").write_text(wide, encoding="utf-8")
    assert _load(conf, _doc("wide.sql"))["recent"].query == wide  # type: ignore[attr-defined]


def test_a_file_that_is_not_utf8_is_refused(conf: Path) -> None:
    (conf / "latin1.sql").write_bytes("SELECT 'café'".encode("latin-1"))
    assert "not UTF-8 text" in str(_error(conf, _doc("latin1.sql")))


def test_an_empty_file_a_folder_and_a_fifo_are_refused(conf: Path) -> None:
    (conf / "empty.sql").write_text("  \n", encoding="utf-8")
    assert "is empty" in str(_error(conf, _doc("empty.sql")))
    assert "not a regular file" in str(_error(conf, _doc("sql")))
    os.mkfifo(conf / "pipe.sql")
    assert "not a regular file" in str(_error(conf, _doc("pipe.sql")))  # and does not hang


@pytest.mark.parametrize("other", [{"query": "'SELECT 1'"}, {"table": "orders"}])
def test_table_query_and_query_file_are_mutually_exclusive(
    conf: Path, other: dict[str, str]
) -> None:
    err = _error(conf, _doc("sql/orders_recent.sql", **other))
    assert "'table', 'query' and 'query_file' are mutually exclusive" in str(err)


def test_a_nul_in_the_path_is_a_config_error(conf: Path) -> None:
    err = _error(conf, _doc("placeholder").replace("'placeholder'", '"sql/a\\0b.sql"'))
    assert "NUL" in str(err)


def test_a_submitted_document_never_makes_the_server_read_a_file(tmp_path: Path) -> None:
    # Control.SubmitRun with config text: the base_dir is the client's word, so no file is read
    (tmp_path / "q.sql").write_text("SELECT 1 AS id")
    text = (
        "sources:\n  s: {engine: sqlite, path: db.sqlite}\n"
        "exports:\n  - {name: e, source: s, query_file: q.sql, destination: out}\n"
    )
    assert load_text(text, base_dir=tmp_path)["e"].query == "SELECT 1 AS id"
    with pytest.raises(ConfigError) as err:
        load_text(text, base_dir=tmp_path, read_query_files=False)
    assert err.value.field == "query_file" and "submitted document" in str(err.value)
