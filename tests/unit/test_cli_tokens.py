"""`sluiceway token new|revoke|list` edit a principals file the services accept: a new token
authenticates its principal, a revoked one does not, and the token is never stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluiceway.cli.main import main
from sluiceway.common.principals import AuthFailure, identify, parse


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_new_token_authenticates_until_it_is_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "principals.yaml"
    new = ["token", "new", "--file", str(f), "--principal", "alice", "--role", "operator"]
    code, token, _ = run([*new, "--team", "payments", "--expires-in", "90d"], capsys)
    assert code == 0
    token = token.strip()
    assert token.startswith("slw_") and token not in f.read_text()
    assert f.stat().st_mode & 0o077 == 0  # only its owner reads it
    now = datetime.now(UTC)
    who = identify(parse(f.read_text(), str(f)), f"Bearer {token}", None, now)
    assert (who.name, who.role.value, who.teams) == ("alice", "operator", ("payments",))
    with pytest.raises(AuthFailure, match="expired"):
        identify(parse(f.read_text(), str(f)), f"Bearer {token}", None, now + timedelta(days=91))

    code, listing, _ = run(["token", "list", "--file", str(f)], capsys)
    token_id = listing.splitlines()[1].split()[0]
    assert code == 0 and "live" in listing and token not in listing
    assert run(["token", "revoke", "--file", str(f), "--id", token_id], capsys)[0] == 0
    with pytest.raises(AuthFailure, match="revoked"):
        identify(parse(f.read_text(), str(f)), f"Bearer {token}", None, now)
    assert run(["token", "revoke", "--file", str(f), "--id", token_id], capsys)[0] == 1


def test_a_new_principal_needs_a_role_and_a_broken_file_is_not_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "principals.yaml"
    code, out, err = run(["token", "new", "--file", str(f), "--principal", "bob"], capsys)
    assert code == 1 and not out and "give --role" in err
    f.write_text("principals: [{name: a, role: boss}]")
    args = ["token", "new", "--file", str(f), "--principal", "a", "--role", "admin"]
    code, out, err = run(args, capsys)
    assert code == 1 and not out and "principals.0.role" in err
    assert f.read_text() == "principals: [{name: a, role: boss}]"
