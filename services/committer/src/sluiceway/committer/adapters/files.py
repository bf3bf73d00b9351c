"""The destination directory: reading parts back, and crash-safe writes (temp, fsync, rename)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sluiceway.common import fingerprint, layout
from sluiceway.common.parts import fsync_dir


def observe_parts(run_dir: Path, names: Iterable[str]) -> dict[str, tuple[str, int] | None]:
    """(fingerprint, size) of each part as it is on disk now; None when absent. Blocking."""
    out: dict[str, tuple[str, int] | None] = {}
    for name in names:
        path = run_dir / name
        try:
            out[name] = fingerprint.of_file(path) if path.is_file() else None
        except FileNotFoundError:
            out[name] = None
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn one, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / layout.temp_name(path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
