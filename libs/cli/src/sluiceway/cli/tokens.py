"""`sluiceway token new|revoke|list`: bearer tokens in a principals file (only their digests are
stored; a new token is printed once). The services re-read the file when it changes."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sluiceway.cli.stack import write_private
from sluiceway.common.domain.access import Role
from sluiceway.common.principals import (
    NAME_PATTERN,
    PrincipalsError,
    new_token,
    parse,
    token_digest,
    token_id,
)

_DURATION = re.compile(r"^(\d+)([mhd])$")


class TokenError(ValueError):
    pass


def add_parsers(sub: Any) -> None:
    token = sub.add_parser("token", help="issue, revoke or list API tokens in a principals file")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True
    file_help = "the principals file (SLUICEWAY_AUTH_PRINCIPALS_FILE of the services)"
    new = actions.add_parser(
        "new", help="issue a token (printed once) for a principal, adding the principal if new"
    )
    new.add_argument("--file", required=True, help=file_help)
    new.add_argument("--principal", required=True, help="who the token authenticates")
    new.add_argument("--role", choices=[r.value for r in Role], help="for a new principal")
    new.add_argument("--team", action="append", default=[], help="for a new principal (repeat)")
    new.add_argument("--expires-in", default="", help="e.g. 90d, 12h (default: never)")
    new.add_argument("--note", default="", help="a note stored beside the digest")
    revoke = actions.add_parser("revoke", help="revoke a token by its id, or all of a principal's")
    revoke.add_argument("--file", required=True, help=file_help)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="a token id, as `token list` shows it")
    which.add_argument("--principal", help="revoke every token of this principal")
    listing = actions.add_parser("list", help="principals and their tokens (ids, never tokens)")
    listing.add_argument("--file", required=True, help=file_help)


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"principals": []}
    text = path.read_text()
    parse(text, str(path))  # refuse to edit a file the services would refuse
    doc = yaml.safe_load(text) or {}
    doc.setdefault("principals", [])
    return dict(doc)


def _save(path: Path, doc: dict[str, Any]) -> None:
    """Write a file the services accept, atomically, readable by its owner only."""
    text = yaml.safe_dump(doc, sort_keys=False)
    parse(text, str(path))
    write_private(path, text)


def expires_at(raw: str, now: datetime) -> datetime | None:
    if not raw:
        return None
    match = _DURATION.match(raw)
    if match is None:
        raise TokenError(f"--expires-in {raw!r}: expected a number and m, h or d (e.g. 90d)")
    n, unit = int(match.group(1)), match.group(2)
    step = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: n})
    return (now + step).replace(microsecond=0)


def issue(args: argparse.Namespace, now: datetime) -> str:
    path = Path(args.file)
    doc = _load(path)
    entry = next((p for p in doc["principals"] if p.get("name") == args.principal), None)
    if entry is None:
        if not args.role:
            raise TokenError(f"{args.principal!r} is not in {path}: give --role for a new one")
        if not re.match(NAME_PATTERN, args.principal):
            raise TokenError(f"--principal {args.principal!r}: letters, digits and ._:@-")
        entry = {"name": args.principal, "role": args.role, "teams": args.team, "tokens": []}
        doc["principals"].append(entry)
    elif args.role and args.role != entry.get("role"):
        raise TokenError(
            f"{args.principal!r} is a {entry.get('role')} in {path}: edit the file to change it"
        )
    token = new_token()
    record: dict[str, Any] = {"sha256": token_digest(token)}
    if (expiry := expires_at(args.expires_in, now)) is not None:
        record["expires_at"] = expiry.isoformat().replace("+00:00", "Z")
    if args.note:
        record["note"] = args.note
    entry.setdefault("tokens", []).append(record)
    _save(path, doc)
    return token


def revoke(args: argparse.Namespace) -> int:
    path = Path(args.file)
    doc = _load(path)
    count = 0
    for entry in doc["principals"]:
        for record in entry.get("tokens", []):
            mine = args.principal is not None and entry.get("name") == args.principal
            if (mine or token_id(record["sha256"]) == args.id) and not record.get("revoked"):
                record["revoked"] = True
                count += 1
    if count == 0:
        raise TokenError(f"{path}: no live token matches")
    _save(path, doc)
    return count


def cmd_token(args: argparse.Namespace) -> int:
    try:
        if args.token_command == "new":
            token = issue(args, datetime.now(UTC))
            print(
                f"token for {args.principal} (shown once; store it as a secret):", file=sys.stderr
            )
            print(token)
        elif args.token_command == "revoke":
            n = revoke(args)
            print(
                f"revoked {n} token{'s' if n != 1 else ''}; the services stop accepting "
                "them at their next request",
                file=sys.stderr,
            )
        else:
            directory_doc = _load(Path(args.file))
            for entry in directory_doc["principals"]:
                teams = ",".join(entry.get("teams", [])) or "-"
                print(f"{entry['name']}  {entry['role']}  teams={teams}")
                for record in entry.get("tokens", []):
                    state = "revoked" if record.get("revoked") else "live"
                    until = record.get("expires_at") or "never"
                    print(f"  {token_id(record['sha256'])}  {state}  expires {until}")
    except (TokenError, PrincipalsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
