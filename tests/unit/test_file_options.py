"""File options: sizes, profiles and levels in the config; part splitting and row-group sizing
in the part writer; the _exported_at column in the plan and the parts."""

from __future__ import annotations

import gzip
import io
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sluiceway.common import fileopts
from sluiceway.common.config import ConfigError, check_spec, load_text
from sluiceway.common.domain.events import SchemaField
from sluiceway.common.parts import MIN_ROW_GROUP_ROWS, PART_SLACK, PartWriter
from sluiceway.common.sources.base import Introspection
from sluiceway.planner.domain.chunks import PlanError
from sluiceway.planner.domain.plan import build_plan

DOC = """
sources:
  demo: {engine: sqlite, path: demo.db}
defaults:
  destination: out
%(defaults)s
exports:
  - name: orders
    source: demo
    table: orders
%(export)s
"""


def _load(export: str = "", defaults: str = "") -> dict[str, object]:
    indent = "\n".join("    " + line for line in export.strip().splitlines())
    dflt = "\n".join("  " + line for line in defaults.strip().splitlines())
    spec = load_text(DOC % {"export": indent, "defaults": dflt}, base_dir="/base")["orders"]
    return {
        k: getattr(spec, k)
        for k in (
            "format",
            "compression",
            "compression_level",
            "compression_profile",
            "max_file_bytes",
            "row_group_rows",
            "row_group_mb",
            "add_exported_at",
        )
    }


def _err(export: str = "", defaults: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        _load(export, defaults)
    return str(info.value)


# ---- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (268435456, 268435456),
        ("256MB", 256_000_000),
        ("256MiB", 256 * 2**20),
        ("1GiB", 2**30),
        ("1.5GiB", 3 * 2**29),
        ("64 kib", 65536),
        ("2gb", 2 * 10**9),
        ("100000", 100000),
        ("100000B", 100000),
    ],
)
def test_sizes_parse_in_si_and_iec_units(text: int | str, size: int) -> None:
    assert fileopts.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "1,5GB", "-1MB", "1e9", "0x10"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        fileopts.parse_size(text)


def test_max_file_size_is_stored_in_bytes_from_the_export_or_the_defaults() -> None:
    assert _load("max_file_size: 256MB")["max_file_bytes"] == 256_000_000
    assert _load(defaults="max_file_size: 1GiB")["max_file_bytes"] == 2**30
    assert _load("max_file_size: 1048576", "max_file_size: 1GiB")["max_file_bytes"] == 2**20
    assert _load()["max_file_bytes"] == 0


def test_a_bad_or_tiny_max_file_size_is_a_located_error() -> None:
    assert "field 'max_file_size': '12 parsecs' is not a size" in _err("max_file_size: 12 parsecs")
    message = _err("max_file_size: 1000")
    assert "export 'orders': field 'max_file_size': must be 0 (no limit) or from 64KiB" in message


# ---- compression: profiles and levels --------------------------------------------------------


def test_each_profile_means_one_codec_and_level_per_format() -> None:
    for profile, (codec, level) in fileopts.PROFILES["parquet"].items():
        got = _load(f"compression_profile: {profile}")
        assert (got["compression"], got["compression_level"]) == (codec, level)
        assert got["compression_profile"] == profile
    for profile, (codec, level) in fileopts.PROFILES["csv"].items():
        got = _load(f"format: csv\ncompression_profile: {profile}")
        assert (got["compression"], got["compression_level"]) == (codec, level)


def test_explicit_compression_and_level_override_the_profile() -> None:
    # the level alone: the profile's codec at that level
    got = _load("compression_profile: compact\ncompression_level: 15")
    assert (got["compression"], got["compression_level"]) == ("zstd", 15)
    # another codec: that codec at its default level, not the profile's level
    got = _load("compression_profile: compact\ncompression: snappy")
    assert (got["compression"], got["compression_level"]) == ("snappy", 0)
    got = _load("compression_profile: fast\ncompression: gzip\ncompression_level: 9")
    assert (got["compression"], got["compression_level"]) == ("gzip", 9)
    # a default profile under an export's own codec
    got = _load("compression: zstd", defaults="compression_profile: compact")
    codec, level = fileopts.PROFILES["parquet"]["compact"]
    assert (got["compression"], got["compression_level"]) == (
        "zstd",
        level if codec == "zstd" else 0,
    )


def test_the_resolved_spec_checks_the_same_again() -> None:
    """SubmitRun re-checks a spec the config already checked: resolving a profile is
    idempotent."""
    spec = load_text(DOC % {"export": "    compression_profile: compact", "defaults": ""})["orders"]
    assert check_spec(spec) == spec


def test_an_unknown_profile_is_named() -> None:
    message = _err("compression_profile: tiny")
    assert "field 'compression_profile': unknown profile 'tiny'" in message
    assert "fast, balanced, compact" in message


@pytest.mark.parametrize(
    ("export", "expected"),
    [
        ("compression: zstd\ncompression_level: 23", "'zstd' takes a level from 1 to 22 (got 23)"),
        ("compression: zstd\ncompression_level: -1", "'zstd' takes a level from 1 to 22 (got -1)"),
        ("compression: gzip\ncompression_level: 10", "'gzip' takes a level from 1 to 9 (got 10)"),
        ("compression: lz4\ncompression_level: 3", "'lz4' takes no level (got 3"),
        ("compression: snappy\ncompression_level: 1", "'snappy' takes no level (got 1"),
        ("compression: none\ncompression_level: 1", "'none' takes no level (got 1"),
        ("format: csv\ncompression_level: 4", "'none' takes no level (got 4"),
    ],
)
def test_a_level_the_codec_does_not_take_is_refused(export: str, expected: str) -> None:
    message = _err(export)
    assert "field 'compression_level': compression " + expected in message


def test_levels_in_range_are_kept() -> None:
    assert _load("compression: zstd\ncompression_level: 22")["compression_level"] == 22
    got = _load("format: csv\ncompression: gzip\ncompression_level: 1")
    assert (got["compression"], got["compression_level"]) == ("gzip", 1)


@pytest.mark.parametrize("codec", ["zstd", "snappy", "lz4"])
def test_csv_takes_only_gzip_or_none(codec: str) -> None:
    message = _err(f"format: csv\ncompression: {codec}")
    assert f"field 'compression': csv supports 'none' or 'gzip' (a gzip stream), not '{codec}'" in (
        message
    )


# ---- row groups and _exported_at --------------------------------------------------------------


def test_row_group_mb_and_row_group_rows_are_alternatives() -> None:
    assert _load("row_group_mb: 64")["row_group_mb"] == 64
    # the nearer level wins: an export's rows beat a default's megabytes, and the reverse
    assert _load("row_group_rows: 5000", "row_group_mb: 64")["row_group_mb"] == 0
    assert _load("row_group_mb: 32", "row_group_rows: 5000")["row_group_mb"] == 32
    assert _load(defaults="row_group_mb: 16")["row_group_mb"] == 16
    assert "field 'row_group_mb': set row_group_mb or row_group_rows, not both" in _err(
        "row_group_mb: 8\nrow_group_rows: 1000"
    )
    assert "field 'defaults.row_group_mb'" in _err(defaults="row_group_mb: 8\nrow_group_rows: 10")
    assert "field 'row_group_mb'" in _err("row_group_mb: 5000")
    assert "field 'row_group_mb'" in _err("row_group_mb: 0")


def test_add_exported_at_is_a_boolean_from_the_export_or_the_defaults() -> None:
    assert _load("add_exported_at: true")["add_exported_at"] is True
    assert _load(defaults="add_exported_at: true")["add_exported_at"] is True
    assert _load("add_exported_at: false", "add_exported_at: true")["add_exported_at"] is False
    assert _load()["add_exported_at"] is False
    assert "field 'add_exported_at'" in _err("add_exported_at: sometimes")


def test_exported_at_is_the_time_the_run_id_carries() -> None:
    assert fileopts.exported_at_of("20261122T093700Z-1a2b3c4d") == datetime(
        2026, 11, 22, 9, 37, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="does not start with its time"):
        fileopts.exported_at_of("my-run")


INTRO = Introspection(
    schema=(SchemaField("id", "int64", False, "INTEGER"), SchemaField("name", "string")),
    row_estimate=10,
)


def test_the_plan_schema_ends_with_exported_at_when_the_export_adds_it() -> None:
    spec = load_text(DOC % {"export": "    add_exported_at: true", "defaults": ""})["orders"]
    plan, _ = build_plan(spec, INTRO)
    assert [f.name for f in plan.schema] == ["id", "name", "_exported_at"]
    assert plan.schema[-1] == SchemaField("_exported_at", "timestamp[us, tz=UTC]", False, "")
    without, _ = build_plan(replace(spec, add_exported_at=False), INTRO)
    assert [f.name for f in without.schema] == ["id", "name"]
    assert without.schema_fingerprint != plan.schema_fingerprint
    clash = replace(INTRO, schema=(*INTRO.schema, SchemaField("_exported_at", "string")))
    with pytest.raises(PlanError, match="already has a column '_exported_at'"):
        build_plan(spec, clash)


def test_the_plan_schema_ends_with_row_hash_after_exported_at() -> None:
    spec = load_text(
        DOC % {"export": "    add_exported_at: true\n    row_hash: true", "defaults": ""}
    )["orders"]
    plan, _ = build_plan(spec, INTRO)
    assert [f.name for f in plan.schema] == ["id", "name", "_exported_at", "_row_hash"]
    assert plan.schema[-1] == SchemaField("_row_hash", "int64", False, "")
    clash = replace(INTRO, schema=(*INTRO.schema, SchemaField("_row_hash", "int64")))
    with pytest.raises(PlanError, match="row_hash: the source already has a column '_row_hash'"):
        build_plan(spec, clash)
    with pytest.raises(PlanError, match="row_hash: no column 'nope', 'other' in the export"):
        build_plan(replace(spec, row_hash_columns=("name", "nope", "other")), INTRO)


# ---- the part writer: splitting, row-group sizing, constants ---------------------------------

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("city", pa.string()),
        ("amount", pa.decimal128(12, 2)),
        ("at", pa.timestamp("us", tz="UTC")),
    ]
)
CITIES = ["Zürich", "東京", "Łódź", "New York", "Lisboa", "Québec"]


def _batch(start: int, n: int) -> pa.RecordBatch:
    ids = range(start, start + n)
    return pa.RecordBatch.from_pydict(
        {
            "id": list(ids),
            "name": [f"customer {i * 7919 % 100_003} Ngọc Müller" for i in ids],
            "city": [CITIES[i * 31 % len(CITIES)] for i in ids],
            "amount": [Decimal(i * 7919 % 1_000_000) / 100 for i in ids],
            "at": [1_700_000_000_000_000 + i * 29_000_000 for i in ids],
        },
        schema=SCHEMA,
    )


def _write(tmp_path: Path, rows: int, batch: int = 5000, **kw: object) -> list:  # type: ignore[type-arg]
    args: dict[str, object] = dict(
        chunk_index=0,
        attempt=1,
        fmt="parquet",
        compression="zstd",
        compression_level=0,
        row_group_rows=262_144,
        schema=SCHEMA,
    )
    args.update(kw)
    w = PartWriter(tmp_path, **args)  # type: ignore[arg-type]
    for start in range(0, rows, batch):
        w.write(_batch(start, min(batch, rows - start)))
    return w.close()


def _read(path: Path, fmt: str, compression: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    raw = path.read_bytes()
    if compression == "gzip":
        raw = gzip.decompress(raw)
    return pacsv.read_csv(
        io.BytesIO(raw), convert_options=pacsv.ConvertOptions(column_types=SCHEMA)
    )


FOOTER_ALLOWANCE = 16 * 1024  # Parquet footer (row-group metadata) and the last write unit


# targets large enough that MIN_ROW_GROUP_ROWS rows stay under target/PART_SLACK (rows of
# about 12 bytes in zstd Parquet, 40 in plain Parquet, 20 in gzip CSV, 82 in plain CSV)
@pytest.mark.parametrize(
    ("fmt", "compression", "target"),
    [
        ("parquet", "zstd", 128 * 1024),
        ("parquet", "none", 512 * 1024),
        ("csv", "none", 1024 * 1024),
        ("csv", "gzip", 256 * 1024),
    ],
)
def test_parts_split_near_max_file_bytes_and_hold_every_row(
    tmp_path: Path, fmt: str, compression: str, target: int
) -> None:
    rows = 60_000
    parts = _write(tmp_path, rows, fmt=fmt, compression=compression, max_file_bytes=target)
    assert len(parts) >= 3
    assert [p.part_index for p in parts] == list(range(len(parts)))
    assert sum(p.rows for p in parts) == rows
    for p in parts[:-1]:
        # a part closes at the first write unit that takes it past the target
        assert target <= p.bytes <= target * (1 + 1 / PART_SLACK) + FOOTER_ALLOWANCE, p
    assert parts[-1].bytes <= target * (1 + 1 / PART_SLACK) + FOOTER_ALLOWANCE
    tables = [_read(tmp_path / p.file_name, fmt, compression) for p in parts]
    assert [t.num_rows for t in tables] == [p.rows for p in parts]
    assert pa.concat_tables(tables).equals(pa.Table.from_batches([_batch(0, rows)]))
    for p in parts:
        # a gzip CSV part is named .csv.gz: DuckDB recognises the codec by itself
        assert p.file_name.endswith(".csv.gz") == (fmt == "csv" and compression == "gzip")
        reader = "read_parquet" if fmt == "parquet" else "read_csv_auto"
        sql = f"select count(*) from {reader}('{tmp_path / p.file_name}')"
        assert duckdb.sql(sql).fetchone() == (p.rows,)


def test_a_huge_row_group_setting_is_capped_so_parts_can_split(tmp_path: Path) -> None:
    """One 60k-row row group would make one 700 KB part of a 128 KiB target: the cap cuts row
    groups to about target/PART_SLACK."""
    target = 128 * 1024
    parts = _write(tmp_path, 60_000, batch=60_000, max_file_bytes=target)
    assert len(parts) >= 4
    meta = pq.ParquetFile(tmp_path / parts[1].file_name).metadata
    sizes = [
        sum(meta.row_group(i).column(j).total_compressed_size for j in range(meta.num_columns))
        for i in range(meta.num_row_groups)
    ]
    assert meta.num_row_groups >= PART_SLACK - 1
    assert max(sizes) <= target / PART_SLACK * 1.25, sizes


def test_row_groups_never_go_below_the_floor(tmp_path: Path) -> None:
    parts = _write(tmp_path, 20_000, max_file_bytes=64 * 1024)
    meta = pq.ParquetFile(tmp_path / parts[0].file_name).metadata
    assert meta.row_group(0).num_rows == MIN_ROW_GROUP_ROWS


def test_row_group_bytes_sizes_row_groups_by_the_first_batch_width(tmp_path: Path) -> None:
    width = _batch(0, 5000).nbytes / 5000
    (part,) = _write(tmp_path, 50_000, row_group_rows=1000, row_group_bytes=2**20)
    meta = pq.ParquetFile(tmp_path / part.file_name).metadata
    expected = int(2**20 / width)
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups[:-1] == [expected] * (len(groups) - 1)  # row_group_rows=1000 is ignored
    arrow_mb = pa.Table.from_batches([_batch(0, expected)]).nbytes / 2**20
    assert 0.9 <= arrow_mb <= 1.1


def test_a_constant_column_has_one_value_in_every_part(tmp_path: Path) -> None:
    at = datetime(2026, 11, 22, 9, 37, tzinfo=UTC)
    schema = SCHEMA.append(pa.field("_exported_at", pa.timestamp("us", tz="UTC"), False))
    parts = _write(
        tmp_path,
        30_000,
        schema=schema,
        max_file_bytes=128 * 1024,
        constants={"_exported_at": at},
    )
    assert len(parts) > 1
    for p in parts:
        table = pq.read_table(tmp_path / p.file_name)
        assert table.schema.field("_exported_at").type == pa.timestamp("us", tz="UTC")
        assert table.column("_exported_at").unique().to_pylist() == [at]


def test_csv_gzip_honours_the_level_and_is_reproducible(tmp_path: Path) -> None:
    sizes = {}
    for level in (1, 9):
        for copy in (0, 1):
            d = tmp_path / f"l{level}-{copy}"
            d.mkdir()
            (p,) = _write(d, 20_000, fmt="csv", compression="gzip", compression_level=level)
            sizes[level, copy] = (d / p.file_name).read_bytes()
    assert sizes[1, 0] == sizes[1, 1] and sizes[9, 0] == sizes[9, 1]
    assert len(sizes[9, 0]) < len(sizes[1, 0])
