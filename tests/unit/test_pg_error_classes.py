"""The PostgreSQL error table: which SQLSTATEs and connection-phase messages are retried."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from sluiceway.common.sources import SourceError
from sluiceway.common.sources.pgerrors import (
    MESSAGE_SQLSTATES,
    SQLSTATE_RULES,
    UNKNOWN,
    classify_error,
    classify_sqlstate,
    describe,
    sqlstate_from_message,
)
from sluiceway.common.sources.postgres import classify, sqlstate_of, with_tls

RETRYABLE = {
    "08000": "connection_exception",
    "08001": "sqlclient_unable_to_establish_sqlconnection",
    "08003": "connection_does_not_exist",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
    "08006": "connection_failure",
    "08007": "transaction_resolution_unknown",
    "25P03": "idle_in_transaction_session_timeout",
    "40001": "serialization_failure",
    "40003": "statement_completion_unknown",
    "40P01": "deadlock_detected",
    "53000": "insufficient_resources",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "55P03": "lock_not_available",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "57P05": "idle_session_timeout",
}

PERMANENT = {
    "08P01": "protocol_violation",
    "0A000": "feature_not_supported",
    "22000": "data_exception",
    "22003": "numeric_value_out_of_range",
    "22012": "division_by_zero",
    "22P02": "invalid_text_representation",
    "28000": "invalid_authorization_specification",
    "28P01": "invalid_password",
    "3D000": "invalid_catalog_name",
    "3F000": "invalid_schema_name",
    "40000": "transaction_rollback",
    "40002": "transaction_rollback",  # integrity violation at commit: not a race
    "42501": "insufficient_privilege",
    "42601": "syntax_error",
    "42703": "undefined_column",
    "42804": "syntax_error_or_access_rule_violation",  # datatype_mismatch, via its class
    "42883": "undefined_function",
    "42P01": "undefined_table",
    "53400": "configuration_limit_exceeded",
    "57014": "query_canceled",  # statement_timeout: the same range times out again
    "57P04": "database_dropped",
    "57000": UNKNOWN,  # operator_intervention: only its named codes are retried
    "55000": UNKNOWN,  # object_not_in_prerequisite_state: only 55P03 of class 55 is retried
    "58030": UNKNOWN,
    "72000": UNKNOWN,  # snapshot_too_old
    "XX000": "internal_error",
    "XX001": "data_corrupted",
    "HV00N": UNKNOWN,
}


@pytest.mark.parametrize(("sqlstate", "condition"), sorted(RETRYABLE.items()))
def test_transient_sqlstates_are_retryable(sqlstate: str, condition: str) -> None:
    verdict = classify_sqlstate(sqlstate)
    assert (verdict.retryable, verdict.condition, verdict.sqlstate) == (True, condition, sqlstate)


@pytest.mark.parametrize(("sqlstate", "condition"), sorted(PERMANENT.items()))
def test_permanent_and_unknown_sqlstates_fail_at_once(sqlstate: str, condition: str) -> None:
    verdict = classify_sqlstate(sqlstate)
    assert (verdict.retryable, verdict.condition) == (False, condition)


def test_every_retryable_rule_of_the_table_is_listed_here() -> None:
    """A rule added to the table must be added to this file's lists, with its reason."""
    retryable_codes = {code for code, rule in SQLSTATE_RULES.items() if rule.retryable}
    listed = set(RETRYABLE) | {code[:2] for code in RETRYABLE if code.endswith("000")}
    assert retryable_codes <= listed
    assert all(len(code) in (2, 5) for code in SQLSTATE_RULES)


@pytest.mark.parametrize("sqlstate", ["", "   ", "4000", "400011", "zz"])
def test_malformed_sqlstates_are_unknown(sqlstate: str) -> None:
    assert not classify_sqlstate(sqlstate).retryable
    assert classify_sqlstate(sqlstate).condition == UNKNOWN


def test_lower_case_and_padded_sqlstates_are_normalised() -> None:
    assert classify_sqlstate(" 40p01 ").sqlstate == "40P01"
    assert classify_sqlstate(" 40p01 ").retryable


def test_a_sqlstate_outranks_the_message() -> None:
    verdict = classify_error("42601", "server closed the connection unexpectedly")
    assert (verdict.retryable, verdict.inferred) == (False, False)


# Messages as ADBC (1.13) and psycopg (3.3) report them, from a real PostgreSQL 15 server.
CONNECT_TO = 'IO: [libpq] Failed to connect: connection to server at "127.0.0.1", port 5 failed: '


@pytest.mark.parametrize(
    ("message", "sqlstate", "retryable"),
    [
        (CONNECT_TO + 'FATAL:  too many connections for role "lim"\n', "53300", True),
        (CONNECT_TO + "FATAL:  sorry, too many clients already", "53300", True),
        (
            CONNECT_TO + "FATAL:  remaining connection slots are reserved for roles with the "
            "SUPERUSER attribute",
            "53300",
            True,
        ),
        (CONNECT_TO + "FATAL:  the database system is starting up", "57P03", True),
        (CONNECT_TO + "FATAL:  the database system is shutting down", "57P03", True),
        (
            CONNECT_TO + "FATAL:  the database system is not yet accepting connections",
            "57P03",
            True,
        ),
        (
            CONNECT_TO + "Connection refused\n\tIs the server running on that host and accepting "
            "TCP/IP connections?\n",
            "08001",
            True,
        ),
        (CONNECT_TO + "timeout expired", "08001", True),
        (
            'IO: [libpq] Failed to connect: could not translate host name "db" to address: '
            "Temporary failure in name resolution",
            "08001",
            True,
        ),
        (
            "IO: Failed to prepare query: FATAL:  terminating connection due to administrator "
            "command\nserver closed the connection unexpectedly\n\tThis probably means the server "
            "terminated abnormally\n\tbefore or while processing the request.\n\n"
            "Query was: BEGIN TRANSACTION READ ONLY",
            "57P01",
            True,
        ),
        (
            "[libpq] Execution error [PGRES_FATAL_ERROR]: FATAL:  terminating connection due to "
            "administrator command\n",
            "57P01",
            True,
        ),
        (
            "FATAL:  terminating connection because of crash of another server process",
            "57P02",
            True,
        ),
        ("FATAL:  terminating connection due to idle-session timeout", "57P05", True),
        ("ERROR:  canceling statement due to conflict with recovery", "40001", True),
        (
            "IO: Failed to prepare query: no connection to the server\n\nQuery was: SELECT 1",
            "08003",
            True,
        ),
        ("consuming input failed: server closed the connection unexpectedly", "08006", True),
        ("could not receive data from server: Connection reset by peer", "08006", True),
        ("SSL SYSCALL error: EOF detected", "08006", True),
        (CONNECT_TO + 'FATAL:  password authentication failed for user "sluice"\n', "28P01", False),
        (CONNECT_TO + 'FATAL:  database "nodb" does not exist\n', "3D000", False),
        (CONNECT_TO + 'FATAL:  role "ghost" does not exist\n', "28000", False),
        (
            CONNECT_TO + 'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "u", database "d"',
            "28000",
            False,
        ),
        (CONNECT_TO + 'FATAL:  permission denied for database "source"', "42501", False),
    ],
)
def test_messages_without_a_sqlstate_stand_for_one(
    message: str, sqlstate: str, retryable: bool
) -> None:
    verdict = classify_error(None, message)
    assert (verdict.sqlstate, verdict.retryable, verdict.inferred) == (sqlstate, retryable, True)


@pytest.mark.parametrize(
    "message",
    [
        'IO: [libpq] Failed to connect: could not translate host name "no-such-host.invalid" '
        "to address: Name or service not known\n",
        "ArrowInvalid: something the table does not know",
        "",
        # the statement's echo must not steer the match
        "INVALID_ARGUMENT: Failed to prepare query: oops\n\nQuery was: SELECT 'connection "
        "refused, too many connections for role' AS id",
    ],
)
def test_messages_the_table_does_not_know_are_permanent(message: str) -> None:
    verdict = classify_error("", message)
    assert (verdict.retryable, verdict.condition, verdict.sqlstate) == (False, UNKNOWN, "")


def test_every_message_pattern_maps_to_a_code_the_table_decides() -> None:
    for pattern, code in MESSAGE_SQLSTATES:
        assert classify_sqlstate(code).condition != UNKNOWN, pattern.pattern


def test_server_texts_outrank_libpq_words_around_them() -> None:
    message = CONNECT_TO + "FATAL:  password authentication failed; connection refused"
    assert sqlstate_from_message(message) == "28P01"


def test_the_reason_names_the_condition_the_code_and_the_first_line() -> None:
    msg = 'NOT_FOUND: Failed to prepare query: ERROR:  column "x" does not exist\nLINE 1: ...'
    assert describe(classify_error("42703", msg), msg) == (
        'postgres undefined_column [42703]: NOT_FOUND: Failed to prepare query: ERROR:  column "x" '
        "does not exist"
    )
    inferred = CONNECT_TO + 'FATAL:  too many connections for role "lim"\n'
    assert describe(classify_error(None, inferred), inferred).startswith(
        "postgres too_many_connections [53300 from the message]: IO: [libpq]"
    )
    assert describe(classify_error(None, "odd"), "odd") == "postgres unknown error: odd"


class _AdbcLike(Exception):
    def __init__(self, message: str, sqlstate: str | None, details: list[tuple[bytes, bytes]]):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.details = details


class _Diag:
    sqlstate = "55P03"


class _PsycopgLike(Exception):
    sqlstate = None
    diag = _Diag()


def test_the_sqlstate_is_found_where_each_driver_puts_it() -> None:
    assert sqlstate_of(_AdbcLike("x", "40001", [])) == "40001"
    assert sqlstate_of(_AdbcLike("x", None, [(b"PG_DIAG_SQLSTATE", b"40P01")])) == "40P01"
    assert sqlstate_of(_PsycopgLike("x")) == "55P03"
    assert sqlstate_of(OSError("[libpq] Execution error")) == ""


def test_classify_redacts_the_reason_and_keeps_the_verdict() -> None:
    exc = _AdbcLike(
        "IO: [libpq] Failed to connect: invalid URI postgresql://u:hunter2@db:5432/x: "
        "connection refused",
        None,
        [],
    )
    err = classify(exc)
    assert isinstance(err, SourceError) and err.retryable
    assert "hunter2" not in str(err) and "u:***@db" in str(err)
    assert str(err).startswith("postgres sqlclient_unable_to_establish_sqlconnection [08001 from")
    mine = SourceError("kept", retryable=True)
    assert classify(mine) is mine


# ---- a source's TLS settings, merged into its URL (sources/postgres.py with_tls) -------------


def test_tls_settings_join_a_uri_or_a_key_value_url_quoted() -> None:
    tls = {"sslmode": "verify-full", "sslrootcert": "/etc/ca dir/ca.pem", "sslcert": ""}
    for url in ("postgresql://u:p@db.internal:5433/shop", "host=db.internal port=5433 user=u"):
        merged = conninfo_to_dict(with_tls(url, tls))
        assert merged["sslmode"] == "verify-full"
        assert merged["sslrootcert"] == "/etc/ca dir/ca.pem"
        assert "sslcert" not in merged  # an empty setting says nothing
        assert (merged["host"], merged["port"]) == ("db.internal", "5433")
    assert with_tls("postgresql://u@h/db", {"sslmode": ""}) == "postgresql://u@h/db"


def test_a_tls_setting_in_both_the_url_and_the_source_is_refused_without_the_url() -> None:
    with pytest.raises(SourceError, match="sslmode is set both") as both:
        with_tls("postgresql://u:hunter2@h/db?sslmode=require", {"sslmode": "verify-full"})
    with pytest.raises(SourceError, match="not a libpq connection string") as bad:
        with_tls("postgresql://u:hunter2@h/db?nonsense=1", {"sslmode": "verify-full"})
    for exc in (both.value, bad.value):
        assert not exc.retryable and "hunter2" not in str(exc)
