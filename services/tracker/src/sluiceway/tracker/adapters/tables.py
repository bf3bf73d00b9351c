"""The read model's tables: DuckDB DDL and Arrow schemas side by side, and the rows of a run."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import RunState
from sluiceway.tracker.domain.summary import Summary

# ---- schemas: DuckDB DDL and the Arrow schema of each table, side by side ---------------------

_TYPES: dict[str, tuple[str, pa.DataType]] = {
    "str": ("VARCHAR", pa.string()),
    "int": ("BIGINT", pa.int64()),
    "float": ("DOUBLE", pa.float64()),
    "bool": ("BOOLEAN", pa.bool_()),
    "datetime | None": ("TIMESTAMP", pa.timestamp("us")),  # naive UTC
    "tuple[str, ...]": ("VARCHAR[]", pa.list_(pa.string())),
}


def _columns(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str, pa.DataType]]:
    return [(name, *_TYPES[tp]) for name, tp in pairs]


TABLES: dict[str, list[tuple[str, str, pa.DataType]]] = {
    "runs": _columns((f.name, str(f.type)) for f in dataclasses.fields(Summary)),
    "chunks": _columns(
        [
            ("run_id", "str"),
            ("chunk_index", "int"),
            ("status", "str"),
            ("start_key", "str"),
            ("end_key", "str"),
            ("attempt", "int"),
            ("rows", "int"),
            ("files", "int"),
            ("error", "str"),
            ("winning_attempt", "int"),
            ("started_at", "datetime | None"),
            ("finished_at", "datetime | None"),
            ("priority", "int"),
        ]
    ),
    "parts": _columns(
        [
            ("run_id", "str"),
            ("file_name", "str"),
            ("chunk_index", "int"),
            ("part_index", "int"),
            ("attempt", "int"),
            ("rows", "int"),
            ("bytes", "int"),
            ("content_fingerprint", "str"),
            ("committed", "bool"),
        ]
    ),
    "events": [
        ("seq", "BIGINT", pa.int64()),
        ("run_id", "VARCHAR", pa.string()),
        ("kind", "VARCHAR", pa.string()),
        ("event_id", "VARCHAR", pa.string()),
        ("occurred_at", "TIMESTAMP", pa.timestamp("us")),
        ("data", "BLOB", pa.binary()),
        ("message", "VARCHAR", pa.string()),
    ],
    "quality_issues": _columns(
        [
            ("seq", "int"),
            ("run_id", "str"),
            ("severity", "str"),
            ("rule", "str"),
            ("message", "str"),
        ]
    ),
    "schema_changes": _columns(
        [
            ("seq", "int"),
            ("run_id", "str"),
            ("added", "tuple[str, ...]"),
            ("removed", "tuple[str, ...]"),
            ("type_changed", "tuple[str, ...]"),
        ]
    ),
    "anomalies": _columns(
        [("seq", "int"), ("run_id", "str"), ("event_id", "str"), ("kind", "str"), ("reason", "str")]
    ),
}
# What the file holds, beyond its tables: 2 = the per-run tables hold ended runs only (the runs in
# flight are folded from the journal on start). Bump it when that meaning changes.
LAYOUT = 2
# Changes with any table, column, type or the layout: a file with another fingerprint is rebuilt.
SCHEMA_FINGERPRINT = hashlib.blake2b(
    repr([LAYOUT, *((t, [(n, sql) for n, sql, _ in cols]) for t, cols in TABLES.items())]).encode(),
    digest_size=8,
).hexdigest()
# Tables whose rows are a function of a run's whole state: written when the run ends.
PER_RUN_TABLES = ("runs", "chunks", "parts")


def naive_utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.astimezone(UTC).replace(tzinfo=None)


def summary_row(summary: Summary) -> dict[str, Any]:
    row = dataclasses.asdict(summary)
    row["requested_at"] = naive_utc(summary.requested_at)
    row["finished_at"] = naive_utc(summary.finished_at)
    row["scheduled_at"] = naive_utc(summary.scheduled_at)
    row["apply_bypassed"] = list(summary.apply_bypassed)
    return row


def chunk_rows(state: RunState) -> list[dict[str, Any]]:
    return [
        {
            "run_id": state.run_id,
            "chunk_index": c.index,
            "status": c.status.value,
            "start_key": c.range.start_key,
            "end_key": c.range.end_key,
            "attempt": c.attempt,
            "rows": c.rows,
            "files": sum(1 for (a, _) in c.files if a == c.winning_attempt)
            if c.status is ev.ChunkStatus.COMPLETED
            else len(c.files),
            "error": c.error,
            "winning_attempt": c.winning_attempt,
            "started_at": naive_utc(c.started_at),
            "finished_at": naive_utc(c.finished_at),
            "priority": c.priority,
        }
        for _, c in sorted(state.chunks.items())
    ]


def part_rows(state: RunState) -> list[dict[str, Any]]:
    rows = []
    for _, c in sorted(state.chunks.items()):
        won = c.status is ev.ChunkStatus.COMPLETED
        for (attempt, _part), f in sorted(c.files.items()):
            rows.append(
                {
                    "run_id": state.run_id,
                    "file_name": f.file_name,
                    "chunk_index": f.chunk_index,
                    "part_index": f.part_index,
                    "attempt": f.attempt,
                    "rows": f.rows,
                    "bytes": f.bytes,
                    "content_fingerprint": f.content_fingerprint,
                    "committed": won and attempt == c.winning_attempt,
                }
            )
    return rows


def kind_of_subject(subject: str) -> str:
    parts = subject.split(".")
    return parts[3] if len(parts) > 3 else ""


def run_of_subject(subject: str) -> str:
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else ""
