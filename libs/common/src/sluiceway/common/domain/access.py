"""Who may do what: principals, roles and the visibility of runs. Pure: no I/O.

A run belongs to the principal that submitted it (or that applied the schedule that made it)
and to that principal's team; both are facts of the log (`RunRequested.owner`/`team`), so a
rebuilt read model applies the same rules. A run the caller may not see does not exist for
them: every API answers NOT_FOUND, never PERMISSION_DENIED, so its existence is not disclosed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    READER = "reader"  # reads its own runs
    OPERATOR = "operator"  # submits and cancels its own runs; reads every run of its teams
    ADMIN = "admin"  # everything


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `teams[0]` is the team its runs belong to."""

    name: str
    role: Role
    teams: tuple[str, ...] = ()

    @property
    def team(self) -> str:
        return self.teams[0] if self.teams else ""


# The caller when authentication is off (the local stack, explicitly): it may do everything,
# and its runs belong to no team.
ANONYMOUS = Principal("anonymous", Role.ADMIN)


@dataclass(frozen=True)
class Owner:
    """Whom a run belongs to; `principal == ""` for a run appended before ownership existed
    (only an admin sees it)."""

    principal: str = ""
    team: str = ""


class Action(enum.StrEnum):
    """What a caller asks to do, independent of any run."""

    READ = "read"
    SUBMIT = "submit"
    PLAN = "plan"
    CANCEL = "cancel"
    APPLY_SCHEDULES = "apply_schedules"
    LIST_SCHEDULES = "list_schedules"


_ALLOWED: dict[Role, frozenset[Action]] = {
    Role.READER: frozenset({Action.READ}),
    Role.OPERATOR: frozenset(Action),
    Role.ADMIN: frozenset(Action),
}


def may(principal: Principal, action: Action) -> bool:
    """Whether the principal's role allows the action at all (runs aside)."""
    return action in _ALLOWED[principal.role]


def can_see(principal: Principal, owner: Owner) -> bool:
    """Whether the run exists for this principal."""
    if principal.role is Role.ADMIN:
        return True
    if owner.principal and owner.principal == principal.name:
        return True
    return principal.role is Role.OPERATOR and bool(owner.team) and owner.team in principal.teams


class Verdict(enum.Enum):
    ALLOW = "allow"
    NOT_FOUND = "not_found"  # the run is not the caller's to know about
    DENIED = "denied"  # the caller sees the run but may not do this to it


def cancel_verdict(principal: Principal, owner: Owner) -> Verdict:
    """An admin cancels any run; an operator its own; a reader none. A run the caller cannot
    see is NOT_FOUND whatever the role."""
    if not can_see(principal, owner):
        return Verdict.NOT_FOUND
    if principal.role is Role.ADMIN:
        return Verdict.ALLOW
    if principal.role is Role.OPERATOR and owner.principal == principal.name:
        return Verdict.ALLOW
    return Verdict.DENIED


@dataclass(frozen=True)
class Visibility:
    """The runs a principal sees, as a filter a read model can turn into a query:
    every run, or those owned by `principal`, or of one of `teams`."""

    everything: bool
    principal: str = ""
    teams: tuple[str, ...] = ()


EVERYTHING = Visibility(everything=True)


def visibility(principal: Principal) -> Visibility:
    if principal.role is Role.ADMIN:
        return EVERYTHING
    teams = principal.teams if principal.role is Role.OPERATOR else ()
    return Visibility(everything=False, principal=principal.name, teams=teams)


def visible(view: Visibility, owner: Owner) -> bool:
    """The same rule as `can_see`, from a Visibility (the read model's filter must agree)."""
    if view.everything:
        return True
    if owner.principal and owner.principal == view.principal:
        return True
    return bool(owner.team) and owner.team in view.teams
