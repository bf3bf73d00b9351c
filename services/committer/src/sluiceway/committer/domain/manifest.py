"""The manifest of a committed run: a pure function of the run's state, serialized to the same
bytes on every call (times come from events, never from a clock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sluiceway.committer.domain.cursor import cursor_of
from sluiceway.common import fileopts
from sluiceway.common.domain import partitioning as partitions
from sluiceway.common.domain.events import ExportSpec
from sluiceway.common.domain.run import RunState

MANIFEST_VERSION = 1
STATUS_COMMITTED = "SUCCEEDED"


class ManifestError(ValueError):
    """The state cannot be committed (not planned, a chunk not completed...)."""


def _ts(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_manifest(state: RunState) -> dict[str, Any]:
    """Every field of DESIGN §6. Only the winning attempt's files of each chunk are listed."""
    plan, spec = state.plan, state.spec
    if plan is None or spec is None:
        raise ManifestError("the run is not planned")
    if not state.all_chunks_completed():
        raise ManifestError("not every chunk is completed")
    files = state.committed_files()
    parts = [
        {
            "part_id": f"c{f.chunk_index:05d}-p{f.part_index:04d}",
            "path": f.file_name,
            "rows": f.rows,
            "size_bytes": f.bytes,
            "content_fingerprint": f.content_fingerprint,
            "chunk_index": f.chunk_index,
            "attempt": f.attempt,
            # Parquet: each column's value checksum, recomputed by `validate --depth full`
            **(
                {"column_checksums": dict(sorted(f.column_checksums.items()))}
                if f.column_checksums
                else {}
            ),
        }
        for f in files
    ]
    cursor = cursor_of(spec, plan)  # incremental: the cursor range; else the chunk key bounds
    source: dict[str, Any] = {
        "engine": plan.source_engine or spec.source.engine,
        "strategy": plan.strategy,
        "cursor_column": cursor["cursor_column"] or plan.chunk_column,
        "cursor_low": cursor["cursor_low"],
        "cursor_high": cursor["cursor_high"],
        "source_row_count": (
            state.reconciliation.source_count if state.reconciliation is not None else None
        ),
    }
    if spec.table:
        source["table"] = spec.table
    else:
        source["query_fingerprint"] = plan.query_fingerprint
    finished = [c.finished_at for c in state.chunks.values() if c.finished_at is not None]
    partitioned = partition_listing(spec, parts) if spec.partition_column else {}
    row_hash = (
        {
            "row_hash": {
                "column": fileopts.ROW_HASH,
                "algorithm": fileopts.ROW_HASH_ALGORITHM,
                "encoding": fileopts.ROW_HASH_ENCODING,
                "columns": list(fileopts.row_hash_columns(spec, [f.name for f in plan.schema])),
            }
        }
        if spec.row_hash
        else {}
    )
    return {
        **partitioned,
        **row_hash,
        "manifest_version": MANIFEST_VERSION,
        "run_id": state.run_id,
        "export_name": state.export_name,
        "status": STATUS_COMMITTED,
        "started_at": _ts(state.requested_at),
        "finished_at": _ts(max(finished) if finished else state.requested_at),
        "source": source,
        "destination": spec.destination,
        "format": plan.format or spec.format,
        "compression": plan.compression or spec.compression,
        "schema": [{"name": f.name, "type": f.type, "nullable": f.nullable} for f in plan.schema],
        "schema_fingerprint": plan.schema_fingerprint,
        "row_count": sum(p["rows"] for p in parts),
        "part_count": len(parts),
        "parts": parts,
        "plan_id": plan.plan_id,
    }


def partition_listing(spec: ExportSpec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`partition_by` (the column, granularity and folder key) and `partitions`: each folder
    with its value (None: NULL), rows and parts, in folder order."""
    folders: dict[str, dict[str, Any]] = {}
    for part in parts:
        parsed = partitions.parse_directory(part["path"])
        if parsed is None:
            raise ManifestError(f"part {part['path']} is in no partition folder")
        folder = part["path"].split("/", 1)[0]
        entry = folders.setdefault(
            folder, {"path": folder, "value": parsed[1], "rows": 0, "parts": 0}
        )
        entry["rows"] += part["rows"]
        entry["parts"] += 1
    return {
        "partition_by": {
            "column": spec.partition_column,
            "granularity": spec.partition_granularity,
            "key": partitions.key_name(spec.partition_column, spec.partition_granularity),
        },
        "partitions": [folders[k] for k in sorted(folders)],
    }


def serialize(manifest: dict[str, Any]) -> bytes:
    """Canonical bytes: sorted keys, fixed indent, UTF-8, one trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def total_bytes(manifest: dict[str, Any]) -> int:
    return sum(int(p["size_bytes"]) for p in manifest["parts"])
