"""What a manifest says against what was observed on disk: failures with stable codes, pure.

The committer's validation gate and `sluiceway validate` use the same codes. A code is part of
the contract: it is recorded in ValidationResult events and read by scripts, so it is never
renamed (PART_MISSING and PART_PATH_INVALID predate this module and keep their names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sluiceway.common import fileopts
from sluiceway.common.domain.events import ValidationFailure, ValidationResult

# ---- the vocabulary ------------------------------------------------------------------------

PART_MISSING = "PART_MISSING"  # a listed part is not on disk
SIZE_MISMATCH = "SIZE_MISMATCH"  # its size differs from the listed size_bytes
FINGERPRINT_MISMATCH = "FINGERPRINT_MISMATCH"  # same size, other bytes (xxh3)
PART_PATH_INVALID = "PART_PATH_INVALID"  # the path leaves the run directory
ROW_COUNT_MISMATCH = "ROW_COUNT_MISMATCH"  # the rows in the file differ from the listed rows
PART_UNREADABLE = "PART_UNREADABLE"  # the file is there but is not a readable part
PART_DUPLICATE = "PART_DUPLICATE"  # two parts list the same path
MANIFEST_FIELDS = "MANIFEST_FIELDS"  # a DESIGN §6 field is missing or has the wrong type
MANIFEST_TOTALS = "MANIFEST_TOTALS"  # row_count / part_count differ from the sums over parts
SUCCESS_MISSING = "SUCCESS_MISSING"  # no _SUCCESS next to the manifest
SUCCESS_MISMATCH = "SUCCESS_MISMATCH"  # _SUCCESS does not hold the xxh3 of the manifest bytes
COLUMN_CHECKSUM_MISMATCH = "COLUMN_CHECKSUM_MISMATCH"  # --depth full: a column's values differ
POINTER_MISMATCH = "POINTER_MISMATCH"  # the latest pointer differs from its run's manifest
ROW_HASH_MISMATCH = "ROW_HASH_MISMATCH"  # --depth full: a _row_hash is not its row's hash

CODES: frozenset[str] = frozenset(
    {
        PART_MISSING,
        SIZE_MISMATCH,
        FINGERPRINT_MISMATCH,
        PART_PATH_INVALID,
        ROW_COUNT_MISMATCH,
        PART_UNREADABLE,
        PART_DUPLICATE,
        MANIFEST_FIELDS,
        MANIFEST_TOTALS,
        SUCCESS_MISSING,
        SUCCESS_MISMATCH,
        COLUMN_CHECKSUM_MISMATCH,
        POINTER_MISMATCH,
        ROW_HASH_MISMATCH,
    }
)

FORMATS = ("parquet", "csv")

# DESIGN §6: the manifest's fields and the JSON type each must have
_STR, _INT = (str,), (int,)
MANIFEST_SHAPE: dict[str, tuple[type, ...]] = {
    "manifest_version": _INT,
    "run_id": _STR,
    "export_name": _STR,
    "status": _STR,
    "started_at": _STR,
    "finished_at": _STR,
    "source": (dict,),
    "destination": _STR,
    "format": _STR,
    "compression": _STR,
    "schema": (list,),
    "schema_fingerprint": _STR,
    "row_count": _INT,
    "part_count": _INT,
    "parts": (list,),
    "plan_id": _STR,
}
PART_SHAPE: dict[str, tuple[type, ...]] = {
    "part_id": _STR,
    "path": _STR,
    "rows": _INT,
    "size_bytes": _INT,
    "content_fingerprint": _STR,
    "chunk_index": _INT,
    "attempt": _INT,
}


# ---- what is claimed, what was seen ---------------------------------------------------------


@dataclass(frozen=True)
class PartClaim:
    """A part as a manifest (or a FileWritten) lists it."""

    path: str
    rows: int
    size_bytes: int
    content_fingerprint: str
    # Parquet: column -> the checksum of its values (sluiceway.common.colstats)
    column_checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RowHashClaim:
    """The manifest's `row_hash`: the column holding each row's hash, and what it covers."""

    column: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RowHashSeen:
    """A part's rows whose `_row_hash` differs from the hash of their values (`first`: the
    first one's row number), or the covered columns the part lacks."""

    mismatched: int = 0
    first: int | None = None
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartSeen:
    """A part as it is on disk. `rows` is None when it was not counted (the committer reads
    only bytes); `unreadable` says why the rows could not be read; `outside` is true when the
    path resolves outside the run directory (a symlink)."""

    fingerprint: str
    size: int
    rows: int | None = None
    unreadable: str = ""
    outside: bool = False


Observed = Mapping[str, PartSeen | None]  # path -> what is there; None when absent


def safe_relative(path: str) -> bool:
    """A part path must stay inside the run directory."""
    p = PurePosixPath(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path


def _fail(code: str, part: str, message: str) -> ValidationFailure:
    return ValidationFailure(code=code, part=part, message=message)


def _has(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int in Python, never in a manifest
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


# ---- the checks -----------------------------------------------------------------------------


def is_manifest(doc: object) -> bool:
    """A JSON object that says it is a manifest; anything else cannot be checked at all."""
    return isinstance(doc, dict) and "manifest_version" in doc and "parts" in doc


def check_manifest(doc: Mapping[str, Any]) -> tuple[list[ValidationFailure], list[PartClaim]]:
    """The §6 fields and types, the totals, duplicate paths; and the parts it claims (only the
    well-formed ones: a malformed entry is a MANIFEST_FIELDS failure, not a file to look for)."""
    failures: list[ValidationFailure] = []
    for name, types in MANIFEST_SHAPE.items():
        if name not in doc:
            failures.append(_fail(MANIFEST_FIELDS, "", f"field {name!r} is missing"))
        elif not _has(doc[name], types):
            failures.append(
                _fail(MANIFEST_FIELDS, "", f"field {name!r} is not a {types[0].__name__}")
            )
    fmt = doc.get("format")
    if isinstance(fmt, str) and fmt not in FORMATS:
        failures.append(_fail(MANIFEST_FIELDS, "", f"format {fmt!r} is not one of {FORMATS}"))

    raw_parts = doc.get("parts")
    entries = raw_parts if isinstance(raw_parts, list) else []
    claims: list[PartClaim] = []
    seen_paths: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            failures.append(_fail(MANIFEST_FIELDS, f"parts[{i}]", "not an object"))
            continue
        bad = [k for k, types in PART_SHAPE.items() if not _has(entry.get(k), types)]
        label = entry["path"] if isinstance(entry.get("path"), str) else f"parts[{i}]"
        if bad:
            failures.append(
                _fail(MANIFEST_FIELDS, label, f"missing or ill-typed: {', '.join(bad)}")
            )
            continue
        if entry["path"] in seen_paths:
            failures.append(_fail(PART_DUPLICATE, entry["path"], "listed more than once"))
            continue
        seen_paths.add(entry["path"])
        sums = entry.get("column_checksums", {})
        if not isinstance(sums, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sums.items()
        ):
            failures.append(_fail(MANIFEST_FIELDS, label, "column_checksums: not a string map"))
            sums = {}
        claims.append(
            PartClaim(
                path=entry["path"],
                rows=entry["rows"],
                size_bytes=entry["size_bytes"],
                content_fingerprint=entry["content_fingerprint"],
                column_checksums=sums,
            )
        )

    failures.extend(row_hash_of(doc)[0])
    if isinstance(raw_parts, list):
        rows = sum(e["rows"] for e in entries if isinstance(e, dict) and _has(e.get("rows"), _INT))
        row_count, part_count = doc.get("row_count"), doc.get("part_count")
        if _has(row_count, _INT) and row_count != rows:
            failures.append(
                _fail(MANIFEST_TOTALS, "", f"row_count is {row_count}, the parts hold {rows}")
            )
        if _has(part_count, _INT) and part_count != len(entries):
            failures.append(
                _fail(MANIFEST_TOTALS, "", f"part_count is {part_count}, {len(entries)} listed")
            )
    return failures, claims


def check_parts(claims: Sequence[PartClaim], observed: Observed) -> list[ValidationFailure]:
    """Each claimed part against what is on disk. Size is checked before the fingerprint (a
    different size says more than a different hash); rows only when they were counted."""
    failures: list[ValidationFailure] = []
    for c in claims:
        if not safe_relative(c.path):
            failures.append(_fail(PART_PATH_INVALID, c.path, "path leaves the run directory"))
            continue
        seen = observed.get(c.path)
        if seen is None:
            failures.append(_fail(PART_MISSING, c.path, "file not found"))
            continue
        if seen.outside:
            failures.append(_fail(PART_PATH_INVALID, c.path, "resolves outside the run directory"))
            continue
        if seen.size != c.size_bytes:
            failures.append(
                _fail(SIZE_MISMATCH, c.path, f"{seen.size} bytes on disk, {c.size_bytes} listed")
            )
        elif seen.fingerprint != c.content_fingerprint:
            failures.append(
                _fail(
                    FINGERPRINT_MISMATCH,
                    c.path,
                    f"{seen.fingerprint} on disk, {c.content_fingerprint} listed",
                )
            )
        if seen.unreadable:
            failures.append(_fail(PART_UNREADABLE, c.path, seen.unreadable))
        elif seen.rows is not None and seen.rows != c.rows:
            failures.append(
                _fail(ROW_COUNT_MISMATCH, c.path, f"{seen.rows} rows in the file, {c.rows} listed")
            )
    return failures


def check_columns(claim: PartClaim, computed: Mapping[str, str]) -> list[ValidationFailure]:
    """`validate --depth full`: each column checksum the manifest lists against the one
    computed from the part's values."""
    failures = []
    for column, listed in sorted(claim.column_checksums.items()):
        got = computed.get(column)
        if got is None:
            failures.append(
                _fail(COLUMN_CHECKSUM_MISMATCH, claim.path, f"column {column!r} is not in the part")
            )
        elif got != listed:
            failures.append(
                _fail(
                    COLUMN_CHECKSUM_MISMATCH,
                    claim.path,
                    f"column {column!r}: its values give {got}, the manifest lists {listed}",
                )
            )
    return failures


def row_hash_of(doc: Mapping[str, Any]) -> tuple[list[ValidationFailure], RowHashClaim | None]:
    """The manifest's `row_hash`, if it has one this version can recompute."""
    value = doc.get("row_hash")
    if value is None:
        return [], None
    columns = value.get("columns") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("column"), str)
        or not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) for c in columns)
    ):
        return [_fail(MANIFEST_FIELDS, "", "row_hash: needs a column and a list of columns")], None
    algorithm, encoding = value.get("algorithm"), value.get("encoding")
    if (algorithm, encoding) != (fileopts.ROW_HASH_ALGORITHM, fileopts.ROW_HASH_ENCODING):
        return [
            _fail(
                MANIFEST_FIELDS,
                "",
                f"row_hash: {algorithm!r} over {encoding!r} is not what this version computes "
                f"({fileopts.ROW_HASH_ALGORITHM} over {fileopts.ROW_HASH_ENCODING})",
            )
        ], None
    return [], RowHashClaim(value["column"], tuple(columns))


def check_row_hashes(claim: PartClaim, seen: RowHashSeen) -> list[ValidationFailure]:
    """`validate --depth full`: each row's `_row_hash` against the hash of its values."""
    if seen.missing:
        return [
            _fail(
                ROW_HASH_MISMATCH,
                claim.path,
                f"the part has no column {', '.join(map(repr, seen.missing))}",
            )
        ]
    if seen.mismatched:
        return [
            _fail(
                ROW_HASH_MISMATCH,
                claim.path,
                f"{seen.mismatched} row(s) whose row hash is not their values' hash "
                f"(the first: row {seen.first})",
            )
        ]
    return []


def check_success(manifest_digest: str, success: str | None) -> list[ValidationFailure]:
    """_SUCCESS holds the xxh3 of the manifest's exact bytes (`manifest_digest`)."""
    if success is None:
        return [_fail(SUCCESS_MISSING, "_SUCCESS", "no _SUCCESS next to the manifest")]
    if success.strip() != manifest_digest:
        return [
            _fail(
                SUCCESS_MISMATCH,
                "_SUCCESS",
                f"_SUCCESS holds {success.strip()[:40]!r}, the manifest is {manifest_digest}",
            )
        ]
    return []


def check_pointer(pointer: bytes, run_manifest: bytes | None) -> list[ValidationFailure]:
    """The latest pointer is a byte-for-byte copy of its run's manifest."""
    if run_manifest is None:
        return [_fail(POINTER_MISMATCH, "manifest.json", "the run's manifest.json is missing")]
    if pointer != run_manifest:
        return [_fail(POINTER_MISMATCH, "manifest.json", "differs from the run's manifest.json")]
    return []


def result(failures: Sequence[ValidationFailure]) -> ValidationResult:
    return ValidationResult(passed=not failures, failures=tuple(failures))
