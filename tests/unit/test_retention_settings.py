"""Retention settings: durations and sizes, and the errors that name the variable."""

from __future__ import annotations

import pytest

from sluiceway.common.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30d", 30 * 86400.0), ("12h", 43200.0), ("15m", 900.0), ("2s", 2.0), ("2.5", 2.5)],
)
def test_the_window_is_a_duration(raw: str, seconds: float) -> None:
    assert Settings.from_env({"SLUICEWAY_RUNS_MAX_AGE": raw}).runs_max_age_s == seconds


def test_defaults_keep_thirty_days_with_no_size_bound_and_no_archive() -> None:
    s = Settings.from_env({})
    assert (s.runs_max_age_s, s.runs_max_bytes, s.archive) == (30 * 86400.0, -1, "")
    assert s.stream_settings().runs_max_bytes == -1


@pytest.mark.parametrize(
    ("raw", "size"),
    [("1000", 1000), ("500MiB", 500 << 20), ("50GiB", 50 << 30), ("2T", 2 << 40), ("4kb", 4096)],
)
def test_the_size_bound_takes_binary_units(raw: str, size: int) -> None:
    s = Settings.from_env({"SLUICEWAY_RUNS_MAX_BYTES": raw})
    assert s.runs_max_bytes == size and s.stream_settings().runs_max_bytes == size


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SLUICEWAY_RUNS_MAX_AGE", "0"),
        ("SLUICEWAY_RUNS_MAX_AGE", "a month"),
        ("SLUICEWAY_RUNS_MAX_AGE", "-3d"),
        ("SLUICEWAY_RUNS_MAX_BYTES", "5q"),
        ("SLUICEWAY_RUNS_MAX_BYTES", "0"),
        ("SLUICEWAY_ARCHIVE_INTERVAL_S", "soon"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})
