"""A small SQLite source table for end-to-end tests: items(id INTEGER PRIMARY KEY, name TEXT)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def items_db(path: Path, rows: int) -> Path:
    """Write `rows` rows (ids 0..rows-1) into a new SQLite file at `path`."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(rows)])
    con.commit()
    con.close()
    return path
