"""The webhook decision (pure): which ended runs are notified, why, and what the notice holds;
the settings that configure it."""

from __future__ import annotations

import json

import pytest

from sluiceway.committer.domain import notify
from sluiceway.common import settings as settingsmod
from sluiceway.common.domain import events as ev
from tests.unit.test_committer_decisions import BOTH, PLANNED, state_of

SUCCEEDED = ev.RunCompleted(status=ev.RunStatus.SUCCEEDED)
COMMITTED = ev.ManifestCommitted()
FAILED = ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="chunk 1 failed: boom")
DRIFT = ev.SchemaChanged(added=("colour",))
ISSUE = ev.QualityIssue(severity=ev.Severity.WARN, rule="null_ratio_max", message="name: 0.5%")


@pytest.mark.parametrize(
    ("bodies", "reasons"),
    [
        pytest.param([*BOTH, COMMITTED, SUCCEEDED], (), id="clean-success"),
        pytest.param([*PLANNED, FAILED], ("failed",), id="failed"),
        pytest.param(
            [
                *PLANNED,
                DRIFT,
                ev.Warning(context="schema", message="added colour"),
                *BOTH[2:],
                COMMITTED,
                SUCCEEDED,
            ],
            ("schema_changed",),
            id="drift-warned-is-no-degradation",
        ),
        pytest.param([*BOTH, ISSUE, SUCCEEDED], ("degraded",), id="quality-issue"),
        pytest.param(
            [*BOTH, ev.Warning(context="reconciliation", message="x"), COMMITTED, SUCCEEDED],
            ("degraded",),
            id="warning",
        ),
        pytest.param([*PLANNED, DRIFT, FAILED], ("failed", "schema_changed"), id="both"),
        pytest.param([*PLANNED, ev.RunCompleted(status=ev.RunStatus.CANCELED)], (), id="canceled"),
        pytest.param(
            [*BOTH, ev.RunCompleted(status=ev.RunStatus.SKIPPED, skip_reason="empty")],
            (),
            id="skipped",
        ),
    ],
)
def test_which_ended_runs_are_notified(bodies: list[ev.Body], reasons: tuple[str, ...]) -> None:
    state = state_of(bodies)
    assert notify.reasons_of(state) == reasons
    notice = notify.notice_of(state)
    assert (notice.reasons if notice else ()) == reasons


def test_a_run_in_flight_is_never_notified() -> None:
    assert notify.notice_of(state_of([*PLANNED, DRIFT])) is None


def test_the_notice_says_what_happened_and_is_json() -> None:
    notice = notify.notice_of(state_of([*PLANNED, DRIFT, FAILED]))
    assert notice is not None
    body = json.loads(json.dumps(notice.payload))
    assert body["event"] == "run.failed" and body["status"] == "FAILED"
    assert body["export"] == "orders" and body["error_message"] == "chunk 1 failed: boom"
    assert body["schema_changes"] == [{"added": ["colour"], "removed": [], "type_changed": []}]


def test_only_the_wanted_reasons_are_notified() -> None:
    state = state_of([*BOTH, ISSUE, SUCCEEDED])
    assert notify.notice_of(state, frozenset({"failed"})) is None
    assert notify.notice_of(state, frozenset({"degraded"})) is not None


def test_the_reasons_agree_with_the_settings() -> None:
    assert settingsmod.WEBHOOK_REASONS == notify.REASONS


@pytest.mark.parametrize("url", ["ftp://h/x", "not a url", "http:///path", "https://h:99999/"])
def test_a_bad_webhook_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(settingsmod.SettingsError) as info:
        settingsmod.Settings.from_env({"SLUICEWAY_WEBHOOK_URL": url})
    assert "SLUICEWAY_WEBHOOK_URL" in str(info.value) and url not in str(info.value)


def test_webhook_settings_are_read_and_never_shown() -> None:
    s = settingsmod.Settings.from_env(
        {
            "SLUICEWAY_WEBHOOK_URL": "https://hooks.example/x?token=t0k3n",
            "SLUICEWAY_WEBHOOK_SECRET": "s3cr3t",
            "SLUICEWAY_WEBHOOK_ON": "failed, degraded",
        }
    )
    assert s.webhook_on == frozenset({"failed", "degraded"})
    assert "t0k3n" not in repr(s) and "s3cr3t" not in repr(s)
    with pytest.raises(settingsmod.SettingsError, match="unknown reason"):
        settingsmod.Settings.from_env({"SLUICEWAY_WEBHOOK_ON": "failed,exploded"})
    assert settingsmod.Settings.from_env({}).webhook_on == frozenset(notify.REASONS)
