"""Tuning profiles: what `fast`, `balanced` and `safe` set, and how explicit keys combine with them.

Pure (no I/O): the config loader and Control.SubmitRun resolve a spec through `resolve`, and the
PostgreSQL reader sizes its batches with `batch_hint_bytes`.

The rule: every key a profile sets is filled from the profile only where the export (or its
`defaults`) leaves it unset; an explicit key always wins. One coupling: `batch_size` (rows) and
`batch_size_memory_mb` (bytes) both size PostgreSQL's batches, so the profile's
`batch_size_memory_mb` is not filled when `batch_size` alone is given - the rows then decide
(`batch_size` x the measured row width); when both are given the memory hint decides PostgreSQL's
batch size and `batch_size` is SQLite's. A resolved spec resolves to itself (services check a spec
again): after the first pass `batch_size` is set, so a 0 memory hint stays 0.

Maximum concurrent readers is not a profile value: the export's parallelism is the number of
workers the deployment runs, which nothing in a spec can change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sluiceway.common.domain.events import ExportSpec

MIB = 1 << 20
DEFAULT_PROFILE = "balanced"
# the bytes of a row of unknown width before any batch was measured (bench-table-like rows)
DEFAULT_ROW_BYTES = 128
# the batch hint stays within these bounds whatever batch_size x width comes to
MIN_HINT_BYTES, MAX_HINT_BYTES = 64 << 10, 1 << 30
MAX_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Profile:
    batch_size: int  # rows per batch (SQLite; PostgreSQL's cap when no memory hint)
    batch_size_memory_mb: int  # PostgreSQL: ADBC batch_size_hint_bytes in MiB
    statement_timeout_s: int
    lock_timeout_s: int
    connect_timeout_s: int


PROFILES: dict[str, Profile] = {
    # large batches, long statements, patient with locks: a quiet replica or a maintenance window
    "fast": Profile(131_072, 64, 6 * 3600, 30, 10),
    # today's behaviour before profiles existed (16 MiB batches, 1 h statements, 10 s locks)
    "balanced": Profile(65_536, 16, 3600, 10, 10),
    # a busy primary: small batches, short statements, gives way to any lock within 2 s
    "safe": Profile(16_384, 4, 900, 2, 5),
}
PROFILE_NAMES = tuple(PROFILES)
# (field, lowest, highest) once resolved
BOUNDS = (
    ("batch_size_memory_mb", 0, 1024),
    ("statement_timeout_s", 1, MAX_TIMEOUT_S),
    ("lock_timeout_s", 1, MAX_TIMEOUT_S),
    ("connect_timeout_s", 2, 600),  # libpq: values under 2 s count as 2
)


class TuningError(ValueError):
    """A tuning key that is wrong; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def resolve(spec: ExportSpec) -> ExportSpec:
    """`spec` with its profile named (default `balanced`) and every unset tuning key filled from
    it; explicit keys win (see the module docstring). Raises TuningError."""
    name = spec.tuning_profile or DEFAULT_PROFILE
    profile = PROFILES.get(name)
    if profile is None:
        raise TuningError(
            "tuning_profile",
            f"unknown profile {name!r} (expected one of: {', '.join(PROFILE_NAMES)})",
        )
    memory = spec.batch_size_memory_mb
    if not memory and not spec.batch_size:
        memory = profile.batch_size_memory_mb
    out = replace(
        spec,
        tuning_profile=name,
        batch_size=spec.batch_size or profile.batch_size,
        batch_size_memory_mb=memory,
        statement_timeout_s=spec.statement_timeout_s or profile.statement_timeout_s,
        lock_timeout_s=spec.lock_timeout_s or profile.lock_timeout_s,
        connect_timeout_s=spec.connect_timeout_s or profile.connect_timeout_s,
    )
    for field, low, high in BOUNDS:
        value = getattr(out, field)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise TuningError(field, f"must be an integer from {low} to {high}")
    return out


def batch_hint_bytes(spec: ExportSpec, row_bytes: float | None = None) -> int:
    """ADBC's `batch_size_hint_bytes` for a read of `spec`: `batch_size_memory_mb` MiB when set,
    else `batch_size` rows x `row_bytes` (the width measured on earlier batches of the export,
    DEFAULT_ROW_BYTES before any), within [MIN_HINT_BYTES, MAX_HINT_BYTES]. A spec that never went
    through `resolve` (no batch size at all) reads with the balanced profile's 16 MiB."""
    if spec.batch_size_memory_mb > 0:
        hint = spec.batch_size_memory_mb * MIB
    elif spec.batch_size > 0:
        width = row_bytes if row_bytes and row_bytes > 0 else DEFAULT_ROW_BYTES
        hint = int(spec.batch_size * width)
    else:
        hint = PROFILES[DEFAULT_PROFILE].batch_size_memory_mb * MIB
    return max(MIN_HINT_BYTES, min(MAX_HINT_BYTES, hint))


def session_timeouts_ms(spec: ExportSpec) -> tuple[int, int]:
    """(statement_timeout, lock_timeout) in ms for a source session of `spec`; an unresolved
    spec gets the default profile's."""
    profile = PROFILES.get(spec.tuning_profile or DEFAULT_PROFILE, PROFILES[DEFAULT_PROFILE])
    statement = spec.statement_timeout_s or profile.statement_timeout_s
    lock = spec.lock_timeout_s or profile.lock_timeout_s
    return statement * 1000, lock * 1000


def connect_timeout_s(spec: ExportSpec) -> int:
    profile = PROFILES.get(spec.tuning_profile or DEFAULT_PROFILE, PROFILES[DEFAULT_PROFILE])
    return spec.connect_timeout_s or profile.connect_timeout_s
