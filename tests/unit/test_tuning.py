"""Tuning profiles: what each sets, explicit keys win, config keys and their named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.common import codec, config, tuning
from sluiceway.common.domain import events as ev
from sluiceway.common.sources import open_source
from sluiceway.common.sources.postgres import PostgresSource, with_connect_timeout
from sluiceway.v1 import events_pb2 as pb

MIB = 1 << 20


def _load(tmp_path: Path, extra: str = "", defaults: str = "") -> ev.ExportSpec:
    text = f"""
sources:
  shop: {{engine: postgres, url_env: SHOP_PG_URL}}
defaults:
  destination: out
{defaults}
exports:
  - name: orders
    source: shop
    table: public.orders
{extra}
"""
    return config.load_text(text, base_dir=tmp_path)["orders"]


def test_no_profile_means_balanced_which_is_the_old_behaviour(tmp_path: Path) -> None:
    spec = _load(tmp_path)
    assert spec.tuning_profile == "balanced"
    assert (spec.batch_size, spec.batch_size_memory_mb) == (65_536, 16)
    assert (spec.statement_timeout_s, spec.lock_timeout_s, spec.connect_timeout_s) == (3600, 10, 10)
    assert tuning.batch_hint_bytes(spec) == 16 * MIB  # the bench path's hint is unchanged


@pytest.mark.parametrize("name", tuning.PROFILE_NAMES)
def test_each_profile_fills_every_tuning_key(tmp_path: Path, name: str) -> None:
    spec = _load(tmp_path, f"    tuning_profile: {name}")
    p = tuning.PROFILES[name]
    assert spec.tuning_profile == name
    assert (spec.batch_size, spec.batch_size_memory_mb) == (p.batch_size, p.batch_size_memory_mb)
    assert (spec.statement_timeout_s, spec.lock_timeout_s, spec.connect_timeout_s) == (
        p.statement_timeout_s,
        p.lock_timeout_s,
        p.connect_timeout_s,
    )


def test_profiles_order_from_fast_to_safe() -> None:
    fast, balanced, safe = (tuning.PROFILES[n] for n in ("fast", "balanced", "safe"))
    assert fast.batch_size_memory_mb > balanced.batch_size_memory_mb > safe.batch_size_memory_mb
    assert fast.statement_timeout_s > balanced.statement_timeout_s > safe.statement_timeout_s
    assert fast.lock_timeout_s > balanced.lock_timeout_s > safe.lock_timeout_s


def test_explicit_keys_win_over_the_profile(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        "    tuning_profile: safe\n    statement_timeout_s: 42\n    batch_size_memory_mb: 32",
    )
    assert (spec.statement_timeout_s, spec.batch_size_memory_mb) == (42, 32)
    assert spec.lock_timeout_s == tuning.PROFILES["safe"].lock_timeout_s
    assert spec.batch_size == tuning.PROFILES["safe"].batch_size


def test_export_keys_win_over_defaults_and_defaults_over_the_profile(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        "    lock_timeout_s: 3",
        defaults="  tuning_profile: fast\n  lock_timeout_s: 20\n  statement_timeout_s: 60",
    )
    assert spec.tuning_profile == "fast"
    assert (spec.lock_timeout_s, spec.statement_timeout_s) == (3, 60)


def test_batch_size_alone_sizes_postgres_batches_by_rows(tmp_path: Path) -> None:
    spec = _load(tmp_path, "    batch_size: 1000")
    assert (spec.batch_size, spec.batch_size_memory_mb) == (1000, 0)
    # rows x the measured width, 128 bytes before anything was measured; bounded below
    assert tuning.batch_hint_bytes(spec) == 1000 * tuning.DEFAULT_ROW_BYTES
    assert tuning.batch_hint_bytes(spec, 500.0) == 500_000
    assert tuning.batch_hint_bytes(spec, 1.0) == tuning.MIN_HINT_BYTES


def test_the_memory_hint_wins_over_batch_size_for_postgres(tmp_path: Path) -> None:
    spec = _load(tmp_path, "    batch_size: 1000\n    batch_size_memory_mb: 2")
    assert tuning.batch_hint_bytes(spec, 500.0) == 2 * MIB


def test_resolving_a_resolved_spec_changes_nothing(tmp_path: Path) -> None:
    for extra in ("", "    batch_size: 1000", "    tuning_profile: safe\n    lock_timeout_s: 7"):
        spec = _load(tmp_path, extra)
        assert tuning.resolve(spec) == spec
        assert config.check_spec(spec) == spec


def test_an_unresolved_spec_reads_with_the_balanced_hint_and_timeouts() -> None:
    spec = ev.ExportSpec(name="x")
    assert tuning.batch_hint_bytes(spec) == 16 * MIB
    assert tuning.session_timeouts_ms(spec) == (3_600_000, 10_000)
    assert tuning.connect_timeout_s(spec) == 10


@pytest.mark.parametrize(
    ("extra", "field", "text"),
    [
        ("    tuning_profile: turbo", "tuning_profile", "unknown profile 'turbo'"),
        ("    statement_timeout_s: 0", "statement_timeout_s", ""),
        ("    lock_timeout_s: -1", "lock_timeout_s", ""),
        ("    lock_timeout_s: 10000000", "lock_timeout_s", "from 1 to 604800"),
        ("    batch_size_memory_mb: 4096", "batch_size_memory_mb", "from 0 to 1024"),
        ("    connect_timeout_s: 1", "connect_timeout_s", "from 2 to 600"),
        ("    statement_timeout_s: soon", "statement_timeout_s", ""),
    ],
)
def test_bad_tuning_keys_name_their_field(
    tmp_path: Path, extra: str, field: str, text: str
) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, extra)
    assert caught.value.export == "orders"
    assert field in str(caught.value) and text in str(caught.value), str(caught.value)


def test_a_submitted_spec_with_a_bad_profile_is_refused_with_the_field() -> None:
    spec = ev.ExportSpec(
        name="o",
        source=ev.SourceSpec(engine="sqlite", path="/tmp/x.db"),
        table="t",
        destination="/tmp/out",
        tuning_profile="ludicrous",
    )
    with pytest.raises(config.ConfigError) as caught:
        config.check_spec(spec)
    assert caught.value.field == "tuning_profile"


def test_the_source_session_takes_the_exports_timeouts(tmp_path: Path) -> None:
    spec = _load(tmp_path, "    tuning_profile: safe\n    lock_timeout_s: 3")
    src = open_source(spec, env={"SHOP_PG_URL": "postgresql://u@127.0.0.1:1/db"})
    assert isinstance(src, PostgresSource)
    assert (src.statement_timeout_ms, src.lock_timeout_ms, src.connect_timeout_s) == (
        900_000,
        3000,
        5,
    )


def test_the_connect_timeout_joins_the_url_unless_it_has_one() -> None:
    assert with_connect_timeout("postgresql://h/db", 5) == "postgresql://h/db?connect_timeout=5"
    assert (
        with_connect_timeout("postgresql://h/db?sslmode=disable", 5)
        == "postgresql://h/db?sslmode=disable&connect_timeout=5"
    )
    assert with_connect_timeout("host=h dbname=d", 7) == "host=h dbname=d connect_timeout=7"
    assert with_connect_timeout("postgresql://h/db?connect_timeout=2", 5).endswith("=2")


def test_temp_bytes_readings_survive_the_wire_and_unset_stays_none() -> None:
    for body, name in (
        (ev.PlanResolved(temp_bytes_at_plan=0), "temp_bytes_at_plan"),
        (ev.ManifestCommitted(temp_bytes_at_end=123), "temp_bytes_at_end"),
    ):
        msg = codec.to_message(body, getattr(pb, type(body).__name__)())
        assert codec.from_message(msg, type(body)) == body
        assert getattr(codec.from_message(type(msg)(), type(body)), name) is None


@pytest.mark.parametrize(
    ("at_plan", "at_end", "delta"),
    [(1000, 5096, 4096), (None, 5096, 0), (1000, None, 0), (5000, 10, 0)],
    ids=["measured", "no-plan-reading", "not-committed", "stats-reset"],
)
def test_pg_temp_bytes_delta_is_commit_minus_plan(
    at_plan: int | None, at_end: int | None, delta: int
) -> None:
    from sluiceway.common.domain.run import RunState
    from sluiceway.tracker.domain.summary import summarize

    state = RunState(
        run_id="r",
        plan=ev.PlanResolved(temp_bytes_at_plan=at_plan),
        manifest=ev.ManifestCommitted(temp_bytes_at_end=at_end),
    )
    assert summarize(state).pg_temp_bytes_delta == delta


def test_the_plan_id_ignores_the_temp_bytes_reading() -> None:
    from sluiceway.planner.domain.plan import plan_id_of

    plan = ev.PlanResolved(strategy="full", tuning_profile="balanced")
    assert plan_id_of(plan) == plan_id_of(
        ev.PlanResolved(**{**plan.__dict__, "temp_bytes_at_plan": 7})
    )


def test_rows_mode_rebatches_driver_batches_to_exactly_batch_size() -> None:
    import pyarrow as pa

    from sluiceway.common.sources.postgres import _rebatch

    def batch(n: int) -> pa.RecordBatch:
        return pa.record_batch({"a": list(range(n))})

    out = list(_rebatch([batch(609), batch(609), batch(0), batch(5)], 500))
    assert [b.num_rows for b in out] == [500, 500, 223]
    assert [b.num_rows for b in _rebatch([batch(0)], 10)] == [0]  # an empty read keeps a batch
