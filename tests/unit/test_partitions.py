"""Partitioned output, without a stack: folder names round-trip any value, a batch is split by
value keeping its rows' order, the writer keeps a bounded number of partitions open, and the
config and the plan refuse what cannot be partitioned, naming the field."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.common import config, partitions
from sluiceway.common.domain import partitioning
from sluiceway.common.domain.events import ExportSpec, SchemaField, SourceSpec
from sluiceway.planner.domain.plan import PlanError, partition_problem


@given(st.none() | st.text())
def test_a_folder_name_round_trips_any_value(value: str | None) -> None:
    folder = partitioning.directory("region", value)
    assert "/" not in folder and folder.count("=") == 1
    assert partitioning.parse_directory(folder + "/part-00000-0000-a1.parquet") == (
        "region",
        value,
    )


def test_parts_outside_a_partition_folder_have_none() -> None:
    assert partitioning.parse_directory("part-00000-0000-a1.parquet") is None
    assert partitioning.parse_directory("not a key=x/part.parquet") is None


@given(st.lists(st.sampled_from(["eu", "us", None, "a/b"]), min_size=1, max_size=60))
def test_a_batch_is_split_by_value_in_first_seen_order_keeping_row_order(
    values: list[str | None],
) -> None:
    batch = pa.record_batch({"k": pa.array(values, pa.string()), "i": list(range(len(values)))})
    groups = partitions.split(batch, partitions.partition_keys(batch.column("k"), ""))
    seen: list[str | None] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    assert [v for v, _ in groups] == seen
    for value, rows in groups:
        assert rows.column("i").to_pylist() == [i for i, v in enumerate(values) if v == value]


def test_granularities_of_dates_and_timestamps_in_utc() -> None:
    at = pa.array([datetime(2026, 1, 31, 23, 59, tzinfo=UTC), None], pa.timestamp("us", "UTC"))
    assert partitions.partition_keys(at, "day").to_pylist() == ["2026-01-31", None]
    assert partitions.partition_keys(at, "month").to_pylist() == ["2026-01", None]
    assert partitions.partition_keys(pa.array([date(2026, 5, 1)]), "year").to_pylist() == ["2026"]
    assert partitions.partition_keys(pa.array([True, False]), "").to_pylist() == ["true", "false"]
    assert partitioning.key_name("at", "day") == "at_day"


class _Writer:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.rows = name, log, 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows

    def close(self) -> list[str]:
        self.log.append(f"close {self.name}")
        return [f"{self.name}:{self.rows}"]

    def abort(self, *, keep: bool = False) -> None:
        self.log.append(f"abort {self.name}")


def test_the_writer_keeps_a_bounded_number_of_partitions_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partitions, "MAX_OPEN_WRITERS", 2)
    log: list[str] = []
    writer = partitions.PartitionedWriter("k", "", lambda name: _Writer(name, log))
    for value in ["a", "b", "a", "c", "b"]:
        writer.write(pa.record_batch({"k": [value]}))
    # c closes b (the least recently used), then b closes a
    assert log == ["close k=b", "close k=a"]
    assert writer.close() == [
        ("k=b", "k=b:1"),
        ("k=a", "k=a:2"),
        ("k=c", "k=c:1"),
        ("k=b", "k=b:1"),
    ]
    assert writer.rows == 5


def _load(tmp_path: Path, partition_by: str) -> ExportSpec:
    path = tmp_path / "x.yaml"
    path.write_text(
        "exports:\n  - name: x\n    source: {engine: sqlite, path: x.db}\n    table: t\n"
        f"    destination: out\n    partition_by: {partition_by}\n"
    )
    (tmp_path / "x.db").write_bytes(b"")
    return config.load_file(path)["x"]


def test_config_reads_partition_by_and_names_what_is_wrong(tmp_path: Path) -> None:
    spec = _load(tmp_path, "region")
    assert (spec.partition_column, spec.partition_granularity) == ("region", "")
    spec = _load(tmp_path, "{column: at, granularity: month}")
    assert (spec.partition_column, spec.partition_granularity) == ("at", "month")
    with pytest.raises(config.ConfigError, match=r"partition_by.granularity.*unknown granularity"):
        _load(tmp_path, "{column: at, granularity: week}")
    with pytest.raises(config.ConfigError, match=r"partition_by.*not a column name"):
        _load(tmp_path, "'a b'")
    assert config.PARTITION_GRANULARITIES == partitioning.GRANULARITIES


@pytest.mark.parametrize(
    ("column", "granularity", "error"),
    [
        ("region", "", None),
        ("d", "", None),
        ("at", "day", None),
        ("missing", "", "no column 'missing'"),
        ("region", "day", "needs a date or timestamp"),
        ("ratio", "", "cannot name a folder"),
        ("at", "", "cannot name a folder"),
    ],
)
def test_the_plan_refuses_a_column_that_cannot_partition(
    column: str, granularity: str, error: str | None
) -> None:
    schema = (
        SchemaField("region", "string", True),
        SchemaField("d", "date32[day]", True),
        SchemaField("at", "timestamp[us, tz=UTC]", False),
        SchemaField("ratio", "double", True),
    )
    spec = ExportSpec(
        name="x",
        source=SourceSpec(engine="sqlite", path="x.db"),
        table="t",
        partition_column=column,
        partition_granularity=granularity,
    )
    if error is None:
        partition_problem(spec, schema)
    else:
        with pytest.raises(PlanError, match=error):
            partition_problem(spec, schema)
