"""The CLI's argument parsing, config error path and exit codes (no services needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sluiceway.cli import main as cli

GOOD = """
version: 1
exports:
  - name: orders
    source: {engine: sqlite, path: src.db}
    table: orders
    mode: chunked
    chunk_column: id
    chunk_size: 1000
    destination: out
"""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "exports.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    (tmp_path / "src.db").write_bytes(b"")
    return p


def test_up_defaults_to_two_workers_and_local_state_dir() -> None:
    args = cli.build_parser().parse_args(["up"])
    assert (args.workers, args.detach, args.nats_url) == (2, False, None)
    assert args.state_dir == os.environ.get("SLUICEWAY_STATE_DIR", ".sluiceway")


def test_run_takes_config_export_wait_and_json() -> None:
    args = cli.build_parser().parse_args(
        ["run", "-c", "x.yaml", "--export", "orders", "--wait", "--json", "--state-dir", "/s"]
    )
    assert (args.config, args.export, args.wait, args.json, args.state_dir) == (
        "x.yaml",
        "orders",
        True,
        True,
        "/s",
    )


def test_runs_accepts_repeated_status_and_limit() -> None:
    args = cli.build_parser().parse_args(
        ["runs", "--status", "failed", "--status", "SUCCEEDED", "--limit", "5"]
    )
    assert cli.parse_statuses(args.status) == [6, 5]
    assert args.limit == 5


def test_unknown_status_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["runs", "--status", "DONE", "--state-dir", "/nonexistent"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "unknown status 'DONE'" in err


def test_usage_errors_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "--config" in err


def test_unknown_command_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["frobnicate"], capsys)
    assert code == 1 and err.count("\n") == 1


def test_bad_mode_names_file_export_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, GOOD.replace("mode: chunked", "mode: fulll"))
    code, out, err = run_cli(["run", "-c", str(cfg), "--state-dir", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert "exports.yaml" in err and "export 'orders'" in err and "field 'mode'" in err
    assert "fulll" in err


def test_unknown_field_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, GOOD.replace("table: orders", "table: orders\n    chunk_sise: 5"))
    code, _, err = run_cli(["run", "-c", str(cfg), "--state-dir", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "export 'orders'" in err and "chunk_sise" in err


def test_unset_url_env_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLI_TEST_PG_URL", raising=False)
    text = GOOD.replace(
        "{engine: sqlite, path: src.db}", "{engine: postgres, url_env: CLI_TEST_PG_URL}"
    )
    cfg = write(tmp_path, text)
    code, _, err = run_cli(["plan", "-c", str(cfg), "--state-dir", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "export 'orders'" in err and "field 'source.url_env'" in err
    assert "CLI_TEST_PG_URL is not set" in err


def test_missing_config_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "-c", str(tmp_path / "nope.yaml")], capsys)
    assert code == 1 and err.count("\n") == 1 and "nope.yaml" in err


def test_valid_config_without_a_stack_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICEWAY_CONTROL_ADDR", raising=False)
    monkeypatch.delenv("SLUICEWAY_TRACKER_ADDR", raising=False)
    cfg = write(tmp_path, GOOD)
    code, _, err = run_cli(["run", "-c", str(cfg), "--state-dir", str(tmp_path / "st")], capsys)
    assert code == 1
    assert err == "no stack is running (start one with `sluiceway up`)\n"


def test_unreachable_services_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:  # bound, never listening: nothing answers here
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        code, _, err = run_cli(
            ["status", "r1", "--control", f"127.0.0.1:{port}", "--tracker", f"127.0.0.1:{port}"],
            capsys,
        )
    assert code == 2
    assert err.startswith("error: UNAVAILABLE: ") and err.count("\n") == 1
