"""Who may do what (domain.access) and who a request is (principals.identify): pure rules,
tested by tables and by properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common.domain.access import (
    ANONYMOUS,
    Action,
    Owner,
    Principal,
    Role,
    Verdict,
    can_see,
    cancel_verdict,
    may,
    visibility,
    visible,
)
from sluiceway.common.principals import (
    AuthFailure,
    PrincipalsError,
    identify,
    parse,
    token_digest,
)

ALICE = Principal("alice", Role.OPERATOR, ("payments",))
ANNA = Principal("anna", Role.OPERATOR, ("payments", "risk"))
BOB = Principal("bob", Role.OPERATOR, ("search",))
RITA = Principal("rita", Role.READER, ("payments",))
ROOT = Principal("root", Role.ADMIN)

ALICES_RUN = Owner("alice", "payments")
BOBS_RUN = Owner("bob", "search")
RITAS_RUN = Owner("rita", "payments")
LEGACY_RUN = Owner()  # appended before runs had owners


@pytest.mark.parametrize(
    ("who", "run", "sees", "cancel"),
    [
        (ALICE, ALICES_RUN, True, Verdict.ALLOW),
        (ALICE, BOBS_RUN, False, Verdict.NOT_FOUND),
        (ALICE, RITAS_RUN, True, Verdict.DENIED),  # a team-mate's run: visible, not hers
        (ANNA, ALICES_RUN, True, Verdict.DENIED),
        (BOB, ALICES_RUN, False, Verdict.NOT_FOUND),
        (RITA, RITAS_RUN, True, Verdict.DENIED),  # a reader cancels nothing
        (RITA, ALICES_RUN, False, Verdict.NOT_FOUND),  # a reader sees only its own
        (ROOT, BOBS_RUN, True, Verdict.ALLOW),
        (ROOT, LEGACY_RUN, True, Verdict.ALLOW),
        (ALICE, LEGACY_RUN, False, Verdict.NOT_FOUND),
        (ANONYMOUS, ALICES_RUN, True, Verdict.ALLOW),
    ],
)
def test_who_sees_and_cancels_which_run(
    who: Principal, run: Owner, sees: bool, cancel: Verdict
) -> None:
    assert can_see(who, run) is sees
    assert cancel_verdict(who, run) is cancel


def test_readers_only_read_and_operators_and_admins_do_everything() -> None:
    assert [a for a in Action if may(RITA, a)] == [Action.READ]
    assert all(may(ALICE, a) and may(ROOT, a) for a in Action)


names = st.sampled_from(["alice", "anna", "bob", "rita", "root", ""])
teams = st.sampled_from(["payments", "risk", "search", ""])
principals = st.builds(
    Principal,
    name=names.filter(bool),
    role=st.sampled_from(list(Role)),
    teams=st.lists(teams.filter(bool), max_size=3, unique=True).map(tuple),
)
owners = st.builds(Owner, principal=names, team=teams)


@settings(max_examples=1000)
@given(principals, owners)
def test_the_read_models_filter_agrees_with_the_rule(who: Principal, run: Owner) -> None:
    assert visible(visibility(who), run) is can_see(who, run)


@settings(max_examples=1000)
@given(principals, owners)
def test_a_run_one_cannot_see_is_never_merely_denied(who: Principal, run: Owner) -> None:
    verdict = cancel_verdict(who, run)
    assert (verdict is Verdict.NOT_FOUND) is (not can_see(who, run))
    if verdict is Verdict.ALLOW:
        assert who.role is Role.ADMIN or run.principal == who.name


# ---- identify: a request's credential -> its principal -------------------------------------

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
# fixed, so that the parametrized test ids are the same in every pytest-xdist worker
GOOD, EXPIRED, REVOKED = (f"slw_{c * 43}" for c in "GER")
DOC = f"""
principals:
  - name: alice
    role: operator
    teams: [payments]
    tokens:
      - sha256: {token_digest(GOOD)}
        expires_at: "2027-01-01T00:00:00Z"
      - sha256: {token_digest(EXPIRED)}
        expires_at: "2026-12-06T11:59:59Z"
      - sha256: {token_digest(REVOKED)}
        revoked: true
    subjects: ["CN=alice,OU=clients,O=payments"]
"""
DIRECTORY = parse(DOC, "principals.yaml")


def test_a_valid_token_or_a_known_certificate_subject_is_its_principal() -> None:
    assert identify(DIRECTORY, f"Bearer {GOOD}", None, NOW).name == "alice"
    assert identify(DIRECTORY, f"bearer {GOOD}", None, NOW).teams == ("payments",)
    assert identify(DIRECTORY, None, "CN=alice,OU=clients,O=payments", NOW).name == "alice"


@pytest.mark.parametrize(
    ("header", "subject", "reason"),
    [
        (None, None, "missing"),
        (f"Bearer {EXPIRED}", None, "expired"),
        (f"Bearer {REVOKED}", None, "revoked"),
        (f"Bearer {GOOD}x", None, "unknown_token"),
        (f"Basic {GOOD}", None, "malformed"),
        ("Bearer", None, "malformed"),
        (None, "CN=mallory,OU=clients,O=payments", "unknown_subject"),
        # a token decides when both are sent: a bad token is not rescued by a certificate
        (f"Bearer {EXPIRED}", "CN=alice,OU=clients,O=payments", "expired"),
    ],
)
def test_every_other_credential_is_refused_with_a_reason(
    header: str | None, subject: str | None, reason: str
) -> None:
    with pytest.raises(AuthFailure) as refused:
        identify(DIRECTORY, header, subject, NOW)
    assert refused.value.reason == reason
    for token in (GOOD, EXPIRED, REVOKED):
        assert token not in str(refused.value)


def test_a_token_expires_at_its_instant() -> None:
    deadline = datetime(2027, 1, 1, tzinfo=UTC)
    assert identify(DIRECTORY, f"Bearer {GOOD}", None, deadline - timedelta(microseconds=1))
    with pytest.raises(AuthFailure):
        identify(DIRECTORY, f"Bearer {GOOD}", None, deadline)


@settings(max_examples=1000)
@given(st.one_of(st.none(), st.text(max_size=600)), st.one_of(st.none(), st.text(max_size=300)))
def test_no_header_or_subject_but_the_listed_ones_is_ever_a_principal(
    header: str | None, subject: str | None
) -> None:
    try:
        who = identify(DIRECTORY, header, subject, NOW)
    except AuthFailure as refused:
        assert refused.reason in {"missing", "malformed", "unknown_token", "unknown_subject"}
    else:
        assert who.name == "alice" and subject == "CN=alice,OU=clients,O=payments"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("principals: [{name: a, role: boss}]", "principals.0.role"),
        ("principals: [{name: a, role: admin, tokenz: []}]", "principals.0.tokenz"),
        ("principals: [{name: a, role: admin, tokens: [{sha256: abc}]}]", "sha256"),
        ("principals: [{name: 'a b', role: admin}]", "principals.0.name"),
        ("principals: [{name: a, role: admin}, {name: a, role: reader}]", "named twice"),
        ("[1, 2]", "expected a mapping"),
        ("principals: [", "not YAML"),
    ],
)
def test_a_bad_principals_file_is_refused_naming_the_file_and_the_field(
    text: str, problem: str
) -> None:
    with pytest.raises(PrincipalsError) as refused:
        parse(text, "/etc/sluiceway/auth/principals.yaml")
    assert str(refused.value).startswith("/etc/sluiceway/auth/principals.yaml: ")
    assert problem in str(refused.value)


def test_a_token_listed_twice_or_an_expiry_without_a_zone_is_refused() -> None:
    digest = token_digest(GOOD)
    twice = f"""principals:
  - {{name: a, role: admin, tokens: [{{sha256: {digest}}}]}}
  - {{name: b, role: admin, tokens: [{{sha256: {digest}}}]}}"""
    with pytest.raises(PrincipalsError, match="listed twice"):
        parse(twice, "p.yaml")
    naive = f"principals: [{{name: a, role: admin, tokens: [{{sha256: {digest}, "
    naive += 'expires_at: "2027-01-01T00:00:00"}]}]'
    with pytest.raises(PrincipalsError, match="time zone"):
        parse(naive, "p.yaml")
