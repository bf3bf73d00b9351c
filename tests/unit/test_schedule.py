"""Schedules: occurrences, catch-up after downtime and one run at a time per export."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import check_run_id, scheduled_run_id
from sluiceway.common.domain.run import RunState, fold
from sluiceway.common.domain.schedule import (
    Admit,
    MarkReady,
    Schedule,
    ScheduleError,
    Skip,
    check_schedule,
    decide_export,
    due_occurrences,
    expired,
    expiry_message,
    holding_run,
    occurrences,
    serialises,
    waiting_reason,
)

from .histories import SPEC, History

HOURLY = check_schedule(ev.ScheduleSpec(cron="0 * * * *"))
GRACE = timedelta(seconds=60)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, 3, hour, minute, second, tzinfo=UTC)


def scheduled(when: datetime, *, ready_for: str | None = None, requested: bool = False) -> RunState:
    h = History(scheduled_run_id("orders", when))
    h.add(ev.RunScheduled(spec=SPEC, scheduled_at=when, cron=HOURLY.cron))
    if ready_for is not None:
        h.add(ev.RunReady(reason="due", waiting_for=ready_for))
    if requested:
        h.add(ev.RunRequested(spec=SPEC, requested_by="scheduler"))
    return fold(h.events)


def submitted(run_id: str = "r-manual") -> RunState:
    return fold(History(run_id).planned(1).events)


def test_a_run_id_of_an_occurrence_is_the_same_everywhere_and_one_subject_token() -> None:
    a = scheduled_run_id("orders.daily", at(2))
    assert a == scheduled_run_id("orders.daily", at(2).astimezone(ev_zone("Asia/Tokyo")))
    assert a != scheduled_run_id("orders.daily", at(3)) != scheduled_run_id("other", at(2))
    assert check_run_id(a) == a and a.startswith("20261203T020000Z-s")


def ev_zone(name: str):  # type: ignore[no-untyped-def]
    from sluiceway.common.domain.schedule import zone

    return zone(name)


def test_cron_fields_are_read_in_the_schedule_time_zone() -> None:
    paris = check_schedule(ev.ScheduleSpec(cron="30 2 * * *", timezone="Europe/Paris"))
    got = occurrences(paris, datetime(2026, 3, 27, 12, tzinfo=UTC), limit=3)
    # 02:30 Paris is 01:30 UTC in winter; on 29 March (DST starts) 02:30 does not exist
    assert got[0] == datetime(2026, 3, 28, 1, 30, tzinfo=UTC)
    assert got[2] == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_defaults_are_filled_and_bad_schedules_name_their_key() -> None:
    assert (HOURLY.timezone, HOURLY.catch_up, HOURLY.overlap) == ("UTC", "latest", "wait")
    for spec, key in [
        (ev.ScheduleSpec(cron="* * * *"), "schedule"),
        (ev.ScheduleSpec(cron="0 25 * * *"), "schedule"),
        (ev.ScheduleSpec(cron="0 * * * *", timezone="Nowhere/City"), "timezone"),
        (ev.ScheduleSpec(cron="0 * * * *", catch_up="some"), "catch_up"),
        (ev.ScheduleSpec(cron="0 * * * *", overlap="allow"), "overlap"),
    ]:
        with pytest.raises(ScheduleError) as err:
            check_schedule(spec)
        assert err.value.field == key


def test_the_next_occurrence_is_appended_ahead_of_time_and_only_one() -> None:
    # nothing appended yet: the next occurrence, ahead of its time
    assert due_occurrences(HOURLY, anchor=at(1, 10), now=at(1, 10), grace=GRACE) == [at(2)]
    # one is appended already (anchor in the future): nothing more
    assert due_occurrences(HOURLY, anchor=at(2), now=at(1, 30), grace=GRACE) == []
    # its time came: the one after it is appended
    assert due_occurrences(HOURLY, anchor=at(2), now=at(2, 0, 1), grace=GRACE) == [at(3)]


def test_an_occurrence_far_ahead_waits_until_it_is_within_the_horizon() -> None:
    """An open occurrence holds the run stream's retention back, so it is appended at most
    `ahead` before its time (a monthly schedule does not pin a month of history)."""
    half = timedelta(minutes=30)
    assert due_occurrences(HOURLY, anchor=at(2), now=at(2, 0, 1), grace=GRACE, ahead=half) == []
    assert due_occurrences(HOURLY, anchor=at(2), now=at(2, 29), grace=GRACE, ahead=half) == []
    assert due_occurrences(HOURLY, anchor=at(2), now=at(2, 30), grace=GRACE, ahead=half) == [at(3)]
    # what is due is appended whatever the horizon
    assert due_occurrences(HOURLY, anchor=at(2), now=at(3, 0, 5), grace=GRACE, ahead=half) == [
        at(3)
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all", [at(3), at(4), at(5), at(6)]),
        ("latest", [at(5), at(6)]),
        ("none", [at(6)]),
    ],
)
def test_occurrences_missed_during_downtime_follow_catch_up(
    policy: str, expected: list[datetime]
) -> None:
    s = dataclasses.replace(HOURLY, catch_up=policy)
    # the last appended occurrence was 02:00; the scheduler comes back at 05:30
    assert due_occurrences(s, anchor=at(2), now=at(5, 30), grace=GRACE) == expected


def test_an_on_time_occurrence_runs_whatever_the_policy() -> None:
    s = dataclasses.replace(HOURLY, catch_up="none")
    assert due_occurrences(s, anchor=at(2), now=at(3, 0, 30), grace=GRACE) == [at(3), at(4)]


def test_a_due_occurrence_becomes_ready_and_is_admitted_when_nothing_is_in_flight() -> None:
    run = scheduled(at(2))
    assert decide_export(HOURLY, [run], now=at(1, 59), grace=GRACE) == []
    assert decide_export(HOURLY, [run], now=at(2, 0, 1), grace=GRACE) == [
        MarkReady(run.run_id, "due"),
        Admit(run.run_id),
    ]


def test_an_occurrence_waits_in_ready_while_the_export_has_a_run_in_flight() -> None:
    busy = scheduled(at(1), ready_for="", requested=True)
    new = scheduled(at(2))
    actions = decide_export(HOURLY, [busy, new], now=at(2, 0, 1), grace=GRACE)
    assert actions == [
        MarkReady(new.run_id, f"waiting for run {busy.run_id} of the export to end", busy.run_id)
    ]
    # a manual run of the export counts as in flight too
    manual = submitted()
    waiting = scheduled(at(2), ready_for=manual.run_id)
    assert decide_export(HOURLY, [manual, waiting], now=at(2, 5), grace=GRACE) == []
    assert "waiting for run r-manual" in waiting_reason(waiting)
    # the run in flight ended (it is no longer open): the waiting run is admitted
    assert decide_export(HOURLY, [waiting], now=at(2, 5), grace=GRACE) == [Admit(waiting.run_id)]


def test_with_overlap_skip_an_occurrence_is_skipped_naming_the_run_in_flight() -> None:
    s = dataclasses.replace(HOURLY, overlap="skip")
    busy = scheduled(at(1), ready_for="", requested=True)
    new = scheduled(at(2))
    [action] = decide_export(s, [busy, new], now=at(2, 0, 1), grace=GRACE)
    assert action == Skip(new.run_id, f"run {busy.run_id} of the export is still in flight")


def test_only_the_oldest_ready_run_is_admitted() -> None:
    a, b = scheduled(at(2), ready_for="x"), scheduled(at(3), ready_for="x")
    assert decide_export(HOURLY, [b, a], now=at(3, 1), grace=GRACE) == [Admit(a.run_id)]


def test_a_pre_appended_occurrence_missed_during_downtime_follows_catch_up() -> None:
    run = scheduled(at(2))
    none = dataclasses.replace(HOURLY, catch_up="none")
    [skip] = decide_export(none, [run], now=at(4, 30), grace=GRACE)
    assert isinstance(skip, Skip) and "catch_up: none" in skip.reason
    # latest: superseded by 04:00, which the scheduler appends and runs instead
    [skip] = decide_export(HOURLY, [run], now=at(4, 30), grace=GRACE)
    assert isinstance(skip, Skip) and "superseded by 2026-12-03T04:00:00+00:00" in skip.reason
    assert due_occurrences(HOURLY, anchor=at(2), now=at(4, 30), grace=GRACE) == [at(4), at(5)]
    # latest, and it is the latest: it runs
    assert decide_export(HOURLY, [run], now=at(2, 30), grace=GRACE)[-1] == Admit(run.run_id)
    all_ = dataclasses.replace(HOURLY, catch_up="all")
    assert decide_export(all_, [run], now=at(4, 30), grace=GRACE)[-1] == Admit(run.run_id)


def test_a_canceled_or_unscheduled_occurrence_is_not_admitted() -> None:
    run = scheduled(at(2))
    h = History(run.run_id)
    h.add(ev.RunScheduled(spec=SPEC, scheduled_at=at(2)))
    h.add(ev.CancelRequested(reason="not today"))
    assert decide_export(HOURLY, [fold(h.events)], now=at(2, 1), grace=GRACE) == []
    off = dataclasses.replace(HOURLY, enabled=False)
    for s in (None, off):
        [skip] = decide_export(s, [run], now=at(2, 1), grace=GRACE)
        assert isinstance(skip, Skip) and "removed or disabled" in skip.reason


def test_only_incremental_exports_serialise_their_submissions() -> None:
    assert serialises(dataclasses.replace(SPEC, mode="incremental", cursor_column="id"))
    for mode in ("full", "chunked", "time_window"):
        assert not serialises(dataclasses.replace(SPEC, mode=mode))


def test_an_incremental_submission_is_held_by_the_run_in_flight_else_the_oldest_ready() -> None:
    assert holding_run([]) == ""
    manual = submitted("r-manual")
    later = scheduled(at(3), ready_for="r-manual")
    earlier = scheduled(at(2), ready_for="r-manual")
    upcoming = scheduled(at(4))  # SCHEDULED, not due: it holds nothing yet
    assert holding_run([later, upcoming, manual, earlier]) == "r-manual"
    assert holding_run([later, upcoming, earlier]) == earlier.run_id
    assert holding_run([upcoming]) == ""
    # a READY run being canceled will not be admitted; a run in flight being canceled may
    # still commit, so it still holds the export
    h = History(earlier.run_id)
    h.add(ev.RunScheduled(spec=SPEC, scheduled_at=at(2), cron=HOURLY.cron))
    h.add(ev.RunReady(reason="due"))
    h.add(ev.CancelRequested(reason="not today"))
    assert holding_run([fold(h.events)]) == ""
    m = History("r-manual").planned(1)
    m.add(ev.CancelRequested(reason="stop"))
    assert holding_run([fold(m.events)]) == "r-manual"


def test_schedule_actions_are_values() -> None:
    assert Schedule(at(2)) == Schedule(at(2))


def test_a_run_open_longer_than_the_window_has_expired() -> None:
    week = timedelta(days=7)
    requested = RunState(run_id="r", status=ev.RunStatus.RUNNING, requested_at=at(1))
    assert not expired(requested, now=at(1) + week, max_open=week)  # exactly the window
    assert expired(requested, now=at(1) + week + timedelta(seconds=1), max_open=week)
    ended = RunState(run_id="r", status=ev.RunStatus.FAILED, requested_at=at(1))
    assert not expired(ended, now=at(1) + 2 * week, max_open=week)
    # not requested yet: counted from when its occurrence was due, never from before
    waiting = scheduled(at(2))
    assert waiting.status is ev.RunStatus.SCHEDULED
    assert not expired(waiting, now=at(2) + week, max_open=week)
    assert expired(waiting, now=at(2) + week + timedelta(minutes=1), max_open=week)
    assert expiry_message(week).startswith(ev.EXPIRED + ": still open after 7d")
    assert "SLUICEWAY_RUNS_MAX_AGE" in expiry_message(timedelta(seconds=2))
