"""chunk_by keys without a server: bounds parse strictly, literals never carry text as it came,
and over a real SQLite file the planned ranges of a composite key hold every row exactly once
in equal shares, however the key is skewed; the MySQL spelling of a tuple comparison means the
same as the row-value one."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.common.domain.events import CHUNK_BY_KEYS, ExportSpec, SourceSpec
from sluiceway.common.sources import SourceError
from sluiceway.common.sources.sql import _tuple_compare, key_literal, key_tuple
from sluiceway.common.sources.sqlite import SqliteSource
from sluiceway.planner.domain.chunks import plan_key_chunks
from sluiceway.planner.domain.plan import PlanError, key_every, key_fields


def test_a_bound_is_a_json_array_of_the_keys_width() -> None:
    assert key_tuple('["eu",3]', 2) == ["eu", 3]
    for bad in ('["eu"]', '{"a":1}', "[1.5, 2]", "[true, 1]", "not json"):
        with pytest.raises(SourceError, match="not a JSON array"):
            key_tuple(bad, 2)


@given(st.text())
def test_literals_never_carry_the_text_as_it_came(value: str) -> None:
    my = key_literal(value, "mysql")
    assert my == f"_utf8mb4 X'{value.encode().hex()}'"
    if "\x00" not in value and "$sluiceway_k$" not in value:
        assert key_literal(value, "postgres") == f"$sluiceway_k${value}$sluiceway_k$"
    if "\x00" not in value:
        lit = key_literal(value, "sqlite")
        assert lit.startswith("'") and lit.endswith("'") and "'" not in lit[1:-1].replace("''", "")
    assert key_literal(-5, "postgres") == "-5"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=3, max_size=3),
    st.lists(st.integers(-3, 3), min_size=3, max_size=3),
)
def test_the_spelled_out_comparison_means_the_row_value_one(
    row: list[int], bound: list[int]
) -> None:
    con = sqlite3.connect(":memory:")
    keys = ["a", "b", "c"]
    values = [str(v) for v in bound]
    for op in (">=", "<"):
        spelled = _tuple_compare(keys, values, op, "mysql")
        row_value = _tuple_compare(keys, values, op, "sqlite")
        got = con.execute(
            f"SELECT {spelled}, {row_value} FROM (SELECT ? a, ? b, ? c)", row
        ).fetchone()
        assert (
            bool(got[0])
            == bool(got[1])
            == (tuple(row) >= tuple(bound) if op == ">=" else tuple(row) < tuple(bound))
        )


@pytest.fixture
def skewed(tmp_path: Path) -> Path:
    db = tmp_path / "k.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE pairs (tenant TEXT NOT NULL, seq INTEGER NOT NULL, v TEXT, "
        "PRIMARY KEY (tenant, seq))"
    )
    rows = [("big" if i % 9 else f"t{i % 5}'x", i, f"v{i}") for i in range(2000)]
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    return db


@pytest.mark.parametrize("every", [1, 7, 300, 1999, 2000, 5000])
def test_planned_ranges_hold_every_row_once_in_equal_shares(skewed: Path, every: int) -> None:
    spec = ExportSpec(
        name="p",
        source=SourceSpec(engine="sqlite", path=str(skewed)),
        table="pairs",
        mode="chunked",
        chunk_by=CHUNK_BY_KEYS,
        chunk_size=every,
    )
    source = SqliteSource(str(skewed))
    try:
        intro = source.introspect(spec)
        fields = key_fields(spec, intro)
        assert [f.name for f in fields] == ["tenant", "seq"]
        chunks = plan_key_chunks(source.key_boundaries(spec, fields, key_every(spec, 0)))
        spec = ExportSpec(**{**spec.__dict__, "chunk_columns": ("tenant", "seq")})
        seen = []
        for rng in chunks:
            count, batches = source.count_and_read(spec, rng, intro.schema)
            got = [(r["tenant"], r["seq"]) for b in batches for r in b.to_pylist()]
            assert count == len(got)
            seen.append(got)
    finally:
        source.close()
    flat = list(itertools.chain.from_iterable(seen))
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 2000
    assert [len(s) for s in seen[:-1]] == [every] * (len(seen) - 1)
    assert len(seen) == -(-2000 // every)


def test_key_columns_must_be_not_null_and_exactly_ordered(skewed: Path) -> None:
    source = SqliteSource(str(skewed))
    try:
        spec = ExportSpec(
            name="p",
            source=SourceSpec(engine="sqlite", path=str(skewed)),
            table="pairs",
            mode="chunked",
            chunk_by=CHUNK_BY_KEYS,
            chunk_size=10,
            chunk_columns=("v",),
        )
        with pytest.raises(PlanError, match="'v' may be NULL"):
            key_fields(spec, source.introspect(spec))
        with pytest.raises(PlanError, match="no column 'nope'"):
            key_fields(
                ExportSpec(**{**spec.__dict__, "chunk_columns": ("nope",)}), source.introspect(spec)
            )
    finally:
        source.close()


def test_an_empty_key_is_one_open_range() -> None:
    (only,) = plan_key_chunks([])
    assert (only.start_key, only.end_key) == ("", "")
    first, second = plan_key_chunks([["a", 1], ["b", 2]])
    assert (first.start_key, first.end_key, second.end_key) == ("", '["b",2]', "")
