"""Partition folders of a run directory, as names: pure (no I/O, no pyarrow). The writer is
sluiceway.common.partitions; the manifest lists the folders parsed here."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

GRANULARITIES = ("", "day", "month", "year")  # "": the column's own value
NULL_VALUE = "__HIVE_DEFAULT_PARTITION__"
_DIRECTORY = re.compile(r"^([A-Za-z_][A-Za-z0-9_$]*)=([^/]*)$")


def key_name(column: str, granularity: str) -> str:
    return f"{column}_{granularity}" if granularity else column


def directory(key: str, value: str | None) -> str:
    """The directory of one partition: `<key>=<percent-encoded value>` (`<key>=` for "")."""
    return f"{key}={NULL_VALUE if value is None else quote(value, safe='._-')}"


def parse_directory(path: str) -> tuple[str, str | None] | None:
    """(key, value) of a part path's partition directory (`key=value/part-...`); None when the
    part is not in one. The value is decoded; NULL's directory gives None."""
    head, sep, _ = path.partition("/")
    if not sep:
        return None
    m = _DIRECTORY.match(head)
    if m is None:
        return None
    raw = m[2]
    return m[1], None if raw == NULL_VALUE else unquote(raw)
