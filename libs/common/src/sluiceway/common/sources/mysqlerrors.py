"""MySQL/MariaDB errors: retryable or permanent, by the server's error number.

A chunk is one key range read in one READ ONLY transaction, so an attempt can always be
repeated; the question is whether repeating it can help (as for PostgreSQL, pgerrors).
Retryable: a lost or killed session, a lock another session holds, a deadlock, connection
slots taken, a shutdown. Permanent: bad SQL, a missing table or column, a missing privilege,
a wrong password, a statement timeout (the same statement meets it again), and any number
this table does not name.

The numbers come from the driver's error (PyMySQL: `args[0]`; ConnectorX: the text
`ERROR 1146 (42S02): ...`). Errors below the protocol (a refused or reset connection) carry
none and are read off the message: they are retryable. A TLS handshake that fails to verify the
server's certificate is permanent, whatever number it is wrapped in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RETRYABLE: dict[int, str] = {
    1040: "too_many_connections",
    1053: "server_shutdown",
    1203: "too_many_user_connections",
    1205: "lock_wait_timeout",
    1213: "deadlock",
    1614: "transaction_rolled_back",
    1637: "too_many_concurrent_transactions",
    1927: "connection_killed",
    2002: "cannot_connect",
    2003: "cannot_connect",
    2006: "server_gone_away",
    2013: "connection_lost",
    2055: "connection_lost",
    4031: "disconnected_idle",
}
PERMANENT: dict[int, str] = {
    1044: "access_denied",
    1045: "access_denied",
    1049: "unknown_database",
    1054: "unknown_column",
    1064: "syntax_error",
    1142: "permission_denied",
    1143: "permission_denied",
    1146: "undefined_table",
    1292: "invalid_value",
    1317: "query_interrupted",
    1366: "invalid_value",
    1792: "read_only_transaction",
    1969: "statement_timeout",  # MariaDB max_statement_time
    3024: "statement_timeout",  # MySQL max_execution_time
}
UNKNOWN = "unknown"
TLS_UNVERIFIED = "tls_unverified"  # the server's certificate does not verify: permanent

_CODE = re.compile(r"\bERROR (\d{4,5})\b")
# below the protocol: the connection itself failed (Rust's io::Error, PyMySQL's socket errors)
_LOST = re.compile(
    r"connection refused|connection reset|broken pipe|os error 10[0-9]|os error 11[0-9]|"
    r"connectionclosed|connection closed|unexpected eof|timed out|can't connect|"
    r"lost connection|server has gone away|io ?error|bytes remaining on stream",
    re.I,
)


# a TLS handshake that failed verification (OpenSSL's words, through PyMySQL or ConnectorX):
# trying again meets the same certificate
_TLS = re.compile(
    r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|hostname mismatch|"
    r"IP address mismatch|certificate is not valid for|wrong version number|TlsError",
    re.I,
)


@dataclass(frozen=True)
class Verdict:
    retryable: bool
    condition: str
    code: int  # 0 when the driver gave none and the message named none


def code_of(exc: BaseException) -> int:
    """The server's error number a driver error carries, or 0."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    if m := _CODE.search(str(exc)):
        return int(m[1])
    return 0


def connection_failed(message: str) -> bool:
    """The message says the connection itself failed (refused, reset, cut mid-result)."""
    return bool(_LOST.search(message))


def classify(code: int, message: str) -> Verdict:
    if _TLS.search(message):
        return Verdict(False, TLS_UNVERIFIED, code)
    if code in RETRYABLE:
        return Verdict(True, RETRYABLE[code], code)
    if code in PERMANENT:
        return Verdict(False, PERMANENT[code], code)
    if not code and connection_failed(message):
        return Verdict(True, "connection_lost", 0)
    return Verdict(False, UNKNOWN, code)


def describe(verdict: Verdict, message: str) -> str:
    """A reason: the condition, the error number and the message's first non-empty line
    (driver wrappers such as `MySqlError { ... }` removed). Not redacted: the caller redacts."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first = re.sub(r"^\w+Error \{\s*(.*?)\s*\}$", r"\1", first)
    head = f"mysql {verdict.condition}" + (f" [{verdict.code}]" if verdict.code else " error")
    return f"{head}: {first}" if first else head
