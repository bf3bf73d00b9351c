"""xxh3 fingerprints of files and schemas, written as 'xxh3:<16 hex>'."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import xxhash

from sluiceway.common.domain.events import SchemaField

_CHUNK = 1 << 20


def of_bytes(data: bytes) -> str:
    return f"xxh3:{xxhash.xxh3_64_hexdigest(data)}"


def of_file(path: str | Path) -> tuple[str, int]:
    """(fingerprint, size in bytes) of a file's exact content, read in 1 MiB blocks."""
    h = xxhash.xxh3_64()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
    return f"xxh3:{h.hexdigest()}", size


def of_schema(fields: Iterable[SchemaField]) -> str:
    text = "\n".join(f"{f.name}\t{f.type}\t{int(f.nullable)}" for f in fields)
    return of_bytes(text.encode())
