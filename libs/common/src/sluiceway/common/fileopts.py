"""File options in one place: compression profiles and codec levels, part sizes, the columns
an export adds (`_exported_at`, `_row_hash`).

Pure (no I/O, no pyarrow): the config checks, the planner's domain and the worker share it.
docs/config-files.md states the rules and the measurements behind the profiles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from sluiceway.common.domain.events import ExportSpec, SchemaField

# Level range of each codec; None: the codec takes no level (0 = "the codec's default").
CODEC_LEVELS: dict[str, tuple[int, int] | None] = {
    "zstd": (1, 22),
    "gzip": (1, 9),
    "lz4": None,
    "snappy": None,
    "none": None,
}
# pyarrow's CSV writer has no codec of its own: a CSV part is plain or written through gzip
CSV_CODECS = ("none", "gzip")

# (codec, level) of each profile, per format; measured in docs/config-files.md
PROFILES: dict[str, dict[str, tuple[str, int]]] = {
    "parquet": {"fast": ("zstd", 1), "balanced": ("zstd", 3), "compact": ("zstd", 9)},
    "csv": {"fast": ("gzip", 1), "balanced": ("gzip", 6), "compact": ("gzip", 9)},
}
PROFILE_NAMES = ("fast", "balanced", "compact")


def resolve_compression(fmt: str, profile: str, codec: str, level: int) -> tuple[str, int]:
    """(codec, level) after applying `profile`. The rule: an explicit `compression` replaces the
    profile's codec, an explicit `compression_level` replaces its level; the profile's level is
    kept only for the profile's own codec (another codec gets its default level, 0)."""
    if not profile:
        return codec, level
    p_codec, p_level = PROFILES[fmt][profile]
    chosen = codec or p_codec
    if level:
        return chosen, level
    return chosen, p_level if chosen == p_codec else 0


def level_problem(codec: str, level: int) -> str | None:
    """Why `level` is not a level of `codec`; None when it is (0 is always the default)."""
    if level == 0:
        return None
    bounds = CODEC_LEVELS.get(codec)
    if bounds is None:
        return f"compression {codec!r} takes no level (got {level}; leave it unset or 0)"
    low, high = bounds
    if not low <= level <= high:
        return f"compression {codec!r} takes a level from {low} to {high} (got {level})"
    return None


# ---- sizes ----------------------------------------------------------------------------------

# Units: SI (KB = 1000) and IEC (KiB = 1024), case-insensitive; a bare number is bytes.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
MIN_FILE_BYTES = 64 * 1024
MAX_FILE_BYTES = 2**63 - 1


def parse_size(value: int | str) -> int:
    """Bytes from 268435456, "256MB" (10^6), "256MiB" (2^20), "1.5GiB". Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("must be a size: bytes, or a string like '256MB' or '1GiB'")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(value) if isinstance(value, str) and len(value) <= 40 else None
    if m is None or m[2].lower() not in _UNITS:
        raise ValueError(
            f"{value!r:.60} is not a size (bytes, or a number with B, KB, MB, GB, TB, KiB, "
            "MiB, GiB or TiB)"
        )
    number, unit = m[1], _UNITS[m[2].lower()]
    whole, _, frac = number.partition(".")
    # exact integer arithmetic: "1.5GiB" is 1610612736, never a float rounding of it
    return (
        (int(whole) * unit) + (int(frac) * unit) // (10 ** len(frac)) if frac else int(whole) * unit
    )


def size_problem(size: int) -> str | None:
    if size == 0:
        return None  # no limit
    if not MIN_FILE_BYTES <= size <= MAX_FILE_BYTES:
        return f"must be 0 (no limit) or from 64KiB to {MAX_FILE_BYTES} bytes (got {size})"
    return None


MAX_ROW_GROUP_MB = 4096  # the worker buffers one row group in memory

# ---- the _exported_at column ---------------------------------------------------------------

EXPORTED_AT = "_exported_at"
EXPORTED_AT_FIELD = SchemaField(EXPORTED_AT, "timestamp[us, tz=UTC]", False, "")
_RUN_TIME = re.compile(r"^(\d{8}T\d{6}Z)(?:-|$)")


def exported_at_of(run_id: str) -> datetime:
    """The run's requested time, as its id carries it (ids.new_run_id: 20261122T093700Z-1a2b3c4d):
    one value for every part and attempt of the run, deterministic on retries."""
    m = _RUN_TIME.match(run_id)
    if m is None:
        raise ValueError(f"run_id {run_id!r} does not start with its time (YYYYMMDDTHHMMSSZ)")
    return datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


# ---- the _row_hash column (sluiceway.common.rowhash) ------------------------------------------

ROW_HASH = "_row_hash"
ROW_HASH_FIELD = SchemaField(ROW_HASH, "int64", False, "")
ROW_HASH_ALGORITHM = "xxh3_64"  # seed 0, the 64 bits stored as int64
ROW_HASH_ENCODING = "sluiceway-row-1"  # the bytes hashed: sluiceway.common.rowhash

ADDED_COLUMNS = (EXPORTED_AT, ROW_HASH)


def added_fields(spec: ExportSpec) -> tuple[SchemaField, ...]:
    """The columns the export adds after the source's, in order."""
    return (
        *((EXPORTED_AT_FIELD,) if spec.add_exported_at else ()),
        *((ROW_HASH_FIELD,) if spec.row_hash else ()),
    )


def source_fields(fields: tuple[SchemaField, ...], spec: ExportSpec) -> tuple[SchemaField, ...]:
    """The fields read from the source: the plan's schema without the columns it adds."""
    added = {f.name for f in added_fields(spec)}
    return tuple(f for f in fields if f.name not in added)


def row_hash_columns(spec: ExportSpec, names: Sequence[str]) -> tuple[str, ...]:
    """The columns the row hash covers: `row_hash_columns`, or every exported source column
    (`names` without the added ones, whose values are not the row's)."""
    if spec.row_hash_columns:
        return spec.row_hash_columns
    return tuple(n for n in names if n not in ADDED_COLUMNS)
