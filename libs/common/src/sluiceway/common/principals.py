"""The principals file: who may call the APIs, by hashed bearer token or client-certificate
subject; re-read when it changes on disk, so that tokens are issued, revoked and rotated
without a restart (a Kubernetes Secret update included)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluiceway.common.domain.access import Principal, Role

log = logging.getLogger(__name__)

TOKEN_PREFIX = "slw_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_TOKEN_CHARS = 512


class PrincipalsError(ValueError):
    """The principals file cannot be used; the message names the file and the field."""


def new_token() -> str:
    """A bearer token: 256 random bits, URL-safe. Shown once; only its digest is stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """SHA-256 of the token, hex. Tokens are random (not passwords), so a fast hash is the
    right one: what the file leaks is useless without the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(digest: str) -> str:
    """The short name of a token in logs and listings (a prefix of its digest)."""
    return digest[:12]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenEntry(_Model):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    expires_at: datetime | None = None
    revoked: bool = False
    note: Annotated[str, Field(max_length=256)] = ""


class PrincipalEntry(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    role: Role
    teams: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = []
    tokens: list[TokenEntry] = []
    # client-certificate subjects, as gRPC reports them (e.g. "CN=alice,O=payments")
    subjects: list[Annotated[str, Field(min_length=1, max_length=1024)]] = []


class PrincipalsDoc(_Model):
    principals: list[PrincipalEntry] = []


@dataclass(frozen=True)
class Credential:
    principal: Principal
    token_id: str
    expires_at: datetime | None
    revoked: bool


@dataclass(frozen=True)
class Directory:
    """Principals by token digest and by certificate subject."""

    tokens: Mapping[str, Credential]
    subjects: Mapping[str, Principal]


def parse(text: str, source: str) -> Directory:
    """A principals document -> Directory. Raises PrincipalsError naming `source` and the
    field; never quotes a digest."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise PrincipalsError(f"{source}: not YAML ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise PrincipalsError(f"{source}: expected a mapping with a 'principals' list")
    try:
        doc = PrincipalsDoc.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PrincipalsError(f"{source}: {where}: {first['msg']}") from None
    tokens: dict[str, Credential] = {}
    subjects: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(doc.principals):
        where = f"{source}: principals.{i}"
        if entry.name in names:
            raise PrincipalsError(f"{where}.name: {entry.name!r} is named twice")
        names.add(entry.name)
        principal = Principal(entry.name, entry.role, tuple(entry.teams))
        for j, tok in enumerate(entry.tokens):
            if tok.sha256 in tokens:
                raise PrincipalsError(f"{where}.tokens.{j}: this token is listed twice")
            expires = tok.expires_at
            if expires is not None and expires.tzinfo is None:
                raise PrincipalsError(f"{where}.tokens.{j}.expires_at: give a time zone (Z)")
            tokens[tok.sha256] = Credential(principal, token_id(tok.sha256), expires, tok.revoked)
        for j, subject in enumerate(entry.subjects):
            if subject in subjects:
                raise PrincipalsError(f"{where}.subjects.{j}: {subject!r} is listed twice")
            subjects[subject] = principal
    return Directory(tokens, subjects)


class AuthFailure(Exception):
    """A request that carries no valid credential. `reason` is a stable label (metrics);
    the message is safe to send back (it never quotes the credential)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_BEARER = re.compile(r"^[Bb]earer +(\S+) *$")


def identify(
    directory: Directory, authorization: str | None, subject: str | None, now: datetime
) -> Principal:
    """The caller of a request, from its `authorization` header or else its verified client
    certificate subject. Raises AuthFailure. Pure."""
    if authorization is not None:
        match = _BEARER.match(authorization)
        if match is None or len(authorization) > MAX_TOKEN_CHARS:
            raise AuthFailure("malformed", "authorization: expected 'Bearer <token>'")
        credential = directory.tokens.get(token_digest(match.group(1)))
        if credential is None:
            raise AuthFailure("unknown_token", "the token is not valid")
        if credential.revoked:
            raise AuthFailure("revoked", f"token {credential.token_id} was revoked")
        if credential.expires_at is not None and credential.expires_at <= now:
            raise AuthFailure("expired", f"token {credential.token_id} has expired")
        return credential.principal
    if subject is not None:
        principal = directory.subjects.get(subject)
        if principal is None:
            raise AuthFailure(
                "unknown_subject", f"client certificate {subject[:200]!r} is not a known principal"
            )
        return principal
    raise AuthFailure(
        "missing", "authentication required: send 'authorization: Bearer <token>' or a certificate"
    )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PrincipalsFile:
    """The file named by SLUICEWAY_AUTH_PRINCIPALS_FILE, read again whenever it changed (one
    stat per request). A change that cannot be used (unreadable, not valid) keeps the last good
    directory and says so once in the log; the first read must succeed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen = _stamp(self.path)
        self._directory = self._read()

    def _read(self) -> Directory:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise PrincipalsError(f"{self.path}: cannot read ({exc.strerror})") from None
        return parse(text, str(self.path))

    def current(self) -> Directory:
        stamp = _stamp(self.path)
        if stamp != self._seen:
            self._seen = stamp  # a bad version is reported once, not at every request
            try:
                self._directory = self._read()
                log.info("principals file %s reloaded", self.path)
            except PrincipalsError as exc:
                log.warning("principals file changed but cannot be used, keeping the last: %s", exc)
        return self._directory


def utcnow() -> datetime:
    return datetime.now(UTC)
