"""Which PostgreSQL errors another attempt may cure: a pure table keyed on SQLSTATE."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Rule:
    retryable: bool
    condition: str  # PostgreSQL's condition name (Appendix A), for humans reading the reason


@dataclass(frozen=True)
class Verdict:
    retryable: bool
    condition: str
    sqlstate: str  # "" when the driver gave none and the message named none
    inferred: bool = False  # the SQLSTATE was read off the message text


UNKNOWN = "unknown"

# A chunk is one key range read in one READ ONLY transaction, so an attempt can always be
# repeated; the question is whether repeating it can help. Retryable: what depends on the
# server's momentary state (a lost session, a lock another session holds, connection slots or
# memory taken by other sessions, a shutdown or failover, a hot-standby recovery conflict).
# Permanent: what the same request meets again (bad SQL, a missing column or table, a missing
# privilege, a bad value, a wrong password), and anything this table does not name.
#
# - 57014 query_canceled is permanent: statement_timeout raises it, and a range that took longer
#   than statement_timeout takes as long again; a pg_cancel_backend() is an operator's decision.
#   Failover does not cancel statements, it ends sessions (57P01/57P02, or class 08 when the
#   socket dies), and a standby's recovery conflict is 40001: those are retried.
# - 55P03 lock_not_available (lock_timeout): the lock belongs to another session (a migration's
#   ACCESS EXCLUSIVE, a VACUUM FULL) and is released when that session ends.
# - Class 53 is retryable (connection slots, memory and disk are shared with other sessions),
#   except 53400 configuration_limit_exceeded, which the same query meets again.
# - Class 08 is retryable except 08P01 protocol_violation (a driver/server mismatch repeats).
# - 57P05 idle_session_timeout and 25P03 idle_in_transaction_session_timeout end the session,
#   not the request: a fresh session starts clean.
#
# A five-character code wins over its two-character class.
SQLSTATE_RULES: Mapping[str, Rule] = MappingProxyType(
    {
        # ---- retryable ----------------------------------------------------------------------
        "08": Rule(True, "connection_exception"),
        "08001": Rule(True, "sqlclient_unable_to_establish_sqlconnection"),
        "08003": Rule(True, "connection_does_not_exist"),
        "08004": Rule(True, "sqlserver_rejected_establishment_of_sqlconnection"),
        "08006": Rule(True, "connection_failure"),
        "08007": Rule(True, "transaction_resolution_unknown"),
        "25P03": Rule(True, "idle_in_transaction_session_timeout"),
        "40001": Rule(True, "serialization_failure"),
        "40003": Rule(True, "statement_completion_unknown"),
        "40P01": Rule(True, "deadlock_detected"),
        "53": Rule(True, "insufficient_resources"),
        "53100": Rule(True, "disk_full"),
        "53200": Rule(True, "out_of_memory"),
        "53300": Rule(True, "too_many_connections"),
        "55P03": Rule(True, "lock_not_available"),
        "57P01": Rule(True, "admin_shutdown"),
        "57P02": Rule(True, "crash_shutdown"),
        "57P03": Rule(True, "cannot_connect_now"),
        "57P05": Rule(True, "idle_session_timeout"),
        # ---- permanent (named so that a reason says what happened) --------------------------
        "08P01": Rule(False, "protocol_violation"),
        "0A000": Rule(False, "feature_not_supported"),
        "22": Rule(False, "data_exception"),
        "22003": Rule(False, "numeric_value_out_of_range"),
        "22012": Rule(False, "division_by_zero"),
        "22P02": Rule(False, "invalid_text_representation"),
        "28": Rule(False, "invalid_authorization_specification"),
        "28P01": Rule(False, "invalid_password"),
        "3D000": Rule(False, "invalid_catalog_name"),
        "3F000": Rule(False, "invalid_schema_name"),
        "40": Rule(False, "transaction_rollback"),
        "42": Rule(False, "syntax_error_or_access_rule_violation"),
        "42501": Rule(False, "insufficient_privilege"),
        "42601": Rule(False, "syntax_error"),
        "42703": Rule(False, "undefined_column"),
        "42883": Rule(False, "undefined_function"),
        "42P01": Rule(False, "undefined_table"),
        "53400": Rule(False, "configuration_limit_exceeded"),
        "57014": Rule(False, "query_canceled"),
        "57P04": Rule(False, "database_dropped"),
        "XX000": Rule(False, "internal_error"),
        "XX001": Rule(False, "data_corrupted"),
    }
)

# libpq reports failures of its connection phase, and of a session that died between
# statements, without a SQLSTATE. Such a message is mapped to the SQLSTATE it stands for and the
# table above decides. (pattern over the lower-cased message, SQLSTATE); first match wins; the
# server's FATAL texts come first, being more specific than libpq's words around them
# ("connection to server ... failed: FATAL:  password authentication failed"). The server's
# texts are matched in English: under another lc_messages such an error is unknown, i.e.
# permanent.
MESSAGE_SQLSTATES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        # the server's words, relayed by libpq
        (r"password authentication failed", "28P01"),
        (r"no pg_hba\.conf entry", "28000"),
        (r"is not permitted to log in", "28000"),
        (r'role ".*" does not exist', "28000"),
        (r'database ".*" does not exist', "3D000"),
        (r"permission denied for database", "42501"),
        (r"too many connections for (role|database)", "53300"),
        (r"sorry, too many clients already", "53300"),
        (r"remaining connection slots are reserved", "53300"),
        (r"the database system is (starting up|shutting down|in recovery mode)", "57P03"),
        (r"the database system is not (yet )?accepting connections", "57P03"),
        (r"terminating connection due to administrator command", "57P01"),
        (r"terminating connection because of crash of another server process", "57P02"),
        (r"terminating connection due to idle-session timeout", "57P05"),
        (r"terminating connection due to idle-in-transaction timeout", "25P03"),
        (r"due to conflict with recovery", "40001"),
        # libpq's and the socket's own words
        (r"temporary failure in name resolution", "08001"),
        (r"connection refused", "08001"),
        (r"timeout expired", "08001"),
        (r"connection timed out", "08001"),
        (r"no route to host", "08001"),
        (r"network is unreachable", "08001"),
        (r"server closed the connection unexpectedly", "08006"),
        (r"could not (receive data from|send data to) server", "08006"),
        (r"connection reset by peer", "08006"),
        (r"broken pipe", "08006"),
        (r"ssl syscall error", "08006"),
        (r"ssl connection has been closed unexpectedly", "08006"),
        (r"the connection is lost", "08006"),
        (r"no connection to the server", "08003"),
    )
)

_QUERY_ECHO = "query was:"  # ADBC appends the statement's text: it must not steer the match


def classify_sqlstate(sqlstate: str) -> Verdict:
    """The table's verdict for a SQLSTATE: its own rule, else its class's, else permanent."""
    code = sqlstate.strip().upper()
    rule = None
    if len(code) == 5:
        rule = SQLSTATE_RULES.get(code) or SQLSTATE_RULES.get(code[:2])
    if rule is None:
        return Verdict(False, UNKNOWN, code)
    return Verdict(rule.retryable, rule.condition, code)


def sqlstate_from_message(message: str) -> str:
    """The SQLSTATE a message without one stands for, or "" when no pattern matches."""
    text = message.lower()
    cut = text.find(_QUERY_ECHO)
    if cut >= 0:
        text = text[:cut]
    return next((code for pattern, code in MESSAGE_SQLSTATES if pattern.search(text)), "")


def classify_error(sqlstate: str | None, message: str) -> Verdict:
    """Retryable or permanent, from the driver's SQLSTATE or, lacking one, the message text."""
    if sqlstate and sqlstate.strip():
        return classify_sqlstate(sqlstate)
    inferred = sqlstate_from_message(message)
    if not inferred:
        return Verdict(False, UNKNOWN, "")
    verdict = classify_sqlstate(inferred)
    return Verdict(verdict.retryable, verdict.condition, verdict.sqlstate, inferred=True)


def describe(verdict: Verdict, message: str) -> str:
    """A reason: the condition, the SQLSTATE (and whether it was inferred) and the message's
    first non-empty line. Not redacted: the caller redacts."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    if verdict.sqlstate:
        how = " from the message" if verdict.inferred else ""
        head = f"postgres {verdict.condition} [{verdict.sqlstate}{how}]"
    else:
        head = f"postgres {verdict.condition} error"
    return f"{head}: {first}" if first else head
