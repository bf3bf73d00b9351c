"""Schedules: cron occurrences, catch-up after downtime and one run at a time per export.

Pure: the scheduler passes the time, the export's schedule and the folded states of the
export's open runs; every decision here is a function of those alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .events import EXPIRED, ExportSpec, RunStatus, ScheduleSpec
from .lifecycle import IN_FLIGHT_RUN, TERMINAL_RUN
from .run import RunState

CATCH_UP = ("latest", "all", "none")  # the first is the default
OVERLAP = ("wait", "skip")
# at most this many occurrences are considered per export and tick (catch_up: all after a
# long downtime proceeds this many at a time, oldest first)
MAX_OCCURRENCES = 500


class ScheduleError(ValueError):
    """A schedule that cannot be used; `field` names the config key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


def zone(name: str) -> tzinfo:
    """The IANA time zone `name` ("" is UTC)."""
    if name in ("", "UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("timezone", f"unknown time zone {name[:80]!r}") from None


def check_schedule(s: ScheduleSpec) -> ScheduleSpec:
    """The schedule with its defaults filled in; raises ScheduleError naming the key."""
    fields = s.cron.split()
    if len(fields) != 5:
        raise ScheduleError(
            "schedule",
            f"{s.cron[:80]!r}: expected a cron expression of five fields "
            "(minute hour day-of-month month day-of-week)",
        )
    try:
        CronSim(s.cron, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError("schedule", f"{s.cron[:80]!r}: {exc}") from None
    zone(s.timezone)
    catch_up = s.catch_up or CATCH_UP[0]
    if catch_up not in CATCH_UP:
        raise ScheduleError("catch_up", f"{catch_up[:40]!r}: expected one of {', '.join(CATCH_UP)}")
    overlap = s.overlap or OVERLAP[0]
    if overlap not in OVERLAP:
        raise ScheduleError("overlap", f"{overlap[:40]!r}: expected one of {', '.join(OVERLAP)}")
    return replace(
        s, cron=" ".join(fields), timezone=s.timezone or "UTC", catch_up=catch_up, overlap=overlap
    )


def occurrences(
    s: ScheduleSpec, after: datetime, *, until: datetime | None = None, limit: int = MAX_OCCURRENCES
) -> list[datetime]:
    """Occurrences strictly after `after` (and at or before `until`), in UTC, at most `limit`.
    Cron fields are read in the schedule's time zone (DST gaps and repeats as cronsim does)."""
    out: list[datetime] = []
    it = CronSim(s.cron, after.astimezone(zone(s.timezone)))
    while len(out) < limit:
        try:
            t = next(it).astimezone(UTC)
        except StopIteration:  # an expression that never matches again (e.g. 30 February)
            break
        if until is not None and t > until:
            break
        out.append(t)
    return out


# ---- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Append RunScheduled for the occurrence at `at`."""

    at: datetime


@dataclass(frozen=True)
class MarkReady:
    run_id: str
    reason: str
    waiting_for: str = ""


@dataclass(frozen=True)
class Admit:
    """Append RunRequested: the run starts."""

    run_id: str


@dataclass(frozen=True)
class Skip:
    run_id: str
    reason: str


Action = Schedule | MarkReady | Admit | Skip


def due_occurrences(
    s: ScheduleSpec,
    *,
    anchor: datetime,
    now: datetime,
    grace: timedelta,
    ahead: timedelta | None = None,
) -> list[datetime]:
    """Occurrences to append now: those due since `anchor` (the export's last appended
    occurrence, or when the schedule was installed) that the catch-up policy keeps, plus the
    next one ahead of time when none is appended yet and it is due within `ahead` (None: however
    far). An occurrence is on time when it is at most `grace` old; an older one was missed
    (the scheduler was down) and follows catch_up."""
    due = occurrences(s, anchor, until=now)
    on_time = [t for t in due if now - t <= grace]
    missed = [t for t in due if now - t > grace]
    if s.catch_up == "all":
        keep = missed
    elif s.catch_up == "latest" and not on_time:
        keep = missed[-1:]
    else:
        keep = []
    out = keep + on_time
    if anchor <= now and len(due) < MAX_OCCURRENCES:
        # caught up, and no occurrence ahead yet: append the next one ahead of its time
        out += [t for t in occurrences(s, now, limit=1) if ahead is None or t - now <= ahead]
    return out


def missed_reason(s: ScheduleSpec, run: RunState, *, now: datetime, grace: timedelta) -> str:
    """Why a SCHEDULED occurrence that is due is not run ('' when it is run): it was missed by
    more than `grace` and the catch-up policy drops it."""
    at = run.scheduled_at
    assert at is not None
    if now - at <= grace or s.catch_up == "all":
        return ""
    if s.catch_up == "none":
        return f"missed occurrence {at.isoformat()} (catch_up: none)"
    later = occurrences(s, at, until=now)
    if later:
        return (
            f"missed occurrence {at.isoformat()}, superseded by {later[-1].isoformat()} "
            "(catch_up: latest)"
        )
    return ""


def _by_time(run: RunState) -> tuple[datetime, str]:
    return (run.scheduled_at or run.requested_at or datetime.min.replace(tzinfo=UTC), run.run_id)


def decide_export(
    schedule: ScheduleSpec | None,
    runs: Sequence[RunState],
    *,
    now: datetime,
    grace: timedelta,
) -> list[Action]:
    """What to do for one export's open runs (every run of the export that has not ended):
    due SCHEDULED occurrences become READY (or are skipped when missed and dropped by
    catch_up, or when the schedule is gone); with another run of the export in flight a
    READY run waits (overlap: wait) or is skipped naming that run (overlap: skip); without
    one, the oldest READY run is admitted. One run of an export is in flight at a time."""
    actions: list[Action] = []
    in_flight = sorted((r for r in runs if r.status in IN_FLIGHT_RUN), key=_by_time)
    busy = in_flight[0].run_id if in_flight else ""
    overlap = schedule.overlap if schedule is not None else OVERLAP[0]
    # (run, due now): runs that are READY, or become READY at this tick, oldest first
    candidates: list[tuple[RunState, bool]] = []
    for run in sorted(runs, key=_by_time):
        if run.cancel is not None:
            continue  # the planner ends it CANCELED
        if run.status is RunStatus.SCHEDULED:
            at = run.scheduled_at
            if at is None or at > now:
                continue
            if schedule is None or not schedule.enabled:
                actions.append(Skip(run.run_id, "the export's schedule was removed or disabled"))
                continue
            if reason := missed_reason(schedule, run, now=now, grace=grace):
                actions.append(Skip(run.run_id, reason))
                continue
            candidates.append((run, True))
        elif run.status is RunStatus.READY:
            candidates.append((run, False))
    admit = candidates[0][0] if candidates and not busy else None
    holder = busy or (admit.run_id if admit is not None else "")
    for run, due in candidates:
        if not due:
            continue
        if run is admit:
            actions.append(MarkReady(run.run_id, "due"))
        elif overlap == "skip":
            actions.append(Skip(run.run_id, f"run {holder} of the export is still in flight"))
        else:
            why = f"waiting for run {holder} of the export to end"
            actions.append(MarkReady(run.run_id, why, holder))
    if admit is not None:
        actions.append(Admit(admit.run_id))
    return actions


def serialises(spec: ExportSpec) -> bool:
    """Whether a submitted run of `spec` must wait for the export's other runs: an incremental
    run starts from the cursor the previous one committed, so two at once would read the
    same rows."""
    return spec.mode == "incremental"


def holding_run(runs: Sequence[RunState]) -> str:
    """The run of an export that a new incremental submission would overlap: the oldest one
    in flight (a cancel requested included: it may still commit), else the oldest READY one
    not being canceled (it is admitted before anything submitted after it); '' when none."""
    in_flight = sorted((r for r in runs if r.status in IN_FLIGHT_RUN), key=_by_time)
    ready = sorted(
        (r for r in runs if r.status is RunStatus.READY and r.cancel is None), key=_by_time
    )
    first = (in_flight or ready)[:1]
    return first[0].run_id if first else ""


def waiting_reason(run: RunState, now: datetime | None = None) -> str:
    """Why a run that was not admitted is not running yet ('' for any other run)."""
    if run.status is RunStatus.SCHEDULED and run.scheduled_at is not None:
        return f"scheduled for {run.scheduled_at.isoformat()}"
    if run.status is RunStatus.READY and run.ready is not None:
        if run.ready.waiting_for:
            return f"waiting for run {run.ready.waiting_for} of the export to end"
        return "due: waiting to be admitted"
    return ""


def expired(run: RunState, *, now: datetime, max_open: timedelta) -> bool:
    """A run still open longer than `max_open` since it was requested (or, not requested yet,
    since its occurrence was due): retention never drops an open run's events, so such a run
    is failed (EXPIRED) rather than hold the run stream's window back for ever."""
    if run.status in TERMINAL_RUN:
        return False
    since = run.requested_at or run.scheduled_at
    return since is not None and now - since > max_open


def expiry_message(max_open: timedelta) -> str:
    return (
        f"{EXPIRED}: still open after {_human(max_open)}, the run stream's retention window "
        "(SLUICEWAY_RUNS_MAX_AGE)"
    )


def _human(d: timedelta) -> str:
    s = d.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"
