"""The demo source: a deterministic SQLite `orders` table, generated once and cached."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# Bump when the generated data changes shape: a cached database with another marker is rebuilt.
VERSION = "orders-v1"
DEFAULT_ROWS = 1_000_000
BATCH = 50_000

SCHEMA = """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    customer_name TEXT NOT NULL,
    city TEXT NOT NULL,
    amount DECIMAL(12,2) NOT NULL,
    quantity INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    coupon_code TEXT,
    shipped_at TIMESTAMP
)
"""

# (column, declared type) in table order: the demo's checksum normalises by declared type
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "INTEGER"),
    ("customer_id", "INTEGER"),
    ("customer_name", "TEXT"),
    ("city", "TEXT"),
    ("amount", "DECIMAL(12,2)"),
    ("quantity", "INTEGER"),
    ("created_at", "TIMESTAMP"),
    ("coupon_code", "TEXT"),
    ("shipped_at", "TIMESTAMP"),
)

FIRST = (
    "Zoë",
    "José",
    "François",
    "Małgorzata",
    "Søren",
    "Ana",
    "Björk",
    "Chloé",
    "Dmitri",
    "Ngọc",
    "美咲",
    "太郎",
    "지민",
    "Olúwaseun",
    "Íñigo",
    "Renée",
    "Łukasz",
    "Ayşe",
    "Žofia",
    "Ömer",
    "Emma",
    "Liam",
    "Noah",
    "Mia",
)
LAST = (
    "Müller",
    "García",
    "Dvořák",
    "Nguyễn",
    "O'Brien",
    "Ångström",
    "Łęcki",
    "Kovačević",
    "山田",
    "김",
    "Smith",
    "Sørensen",
    "Pérez",
    "Çelik",
    "Ferreira",
    "Núñez",
    "Østergaard",
)
CITIES = (
    "São Paulo",
    "Zürich",
    "Kraków",
    "Malmö",
    "Reykjavík",
    "Düsseldorf",
    "Québec",
    "Besançon",
    "東京",
    "北京",
    "서울",
    "Hà Nội",
    "İstanbul",
    "Łódź",
    "Coruña",
    "Ærøskøbing",
    "Berlin",
    "Paris",
    "New York 🗽",
    "Lisboa",
)
COUPONS = ("WELCOME10", "SUMMER-☀️", "VIP🎉", "BLACKFRIDAY", "冬セール", "FREESHIP")
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)


def _rows(n: int, seed: int) -> Iterator[tuple[object, ...]]:
    rnd = random.Random(seed)
    names = [f"{f} {ln}" for f in FIRST for ln in LAST]
    base = int(EPOCH.timestamp())
    days: dict[int, str] = {}

    def ts(epoch_s: int) -> str:
        # datetime.strftime per row dominates generation time: cache the date part per day
        day, sod = divmod(epoch_s, 86_400)
        date = days.get(day)
        if date is None:
            date = days[day] = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
        h, rem = divmod(sod, 3600)
        m, s = divmod(rem, 60)
        return f"{date} {h:02d}:{m:02d}:{s:02d}"

    nn, nc, nk = len(names), len(CITIES), len(COUPONS)
    bits = rnd.getrandbits
    for i in range(1, n + 1):
        # one 96-bit draw per row, sliced into fields: random.* calls dominate otherwise
        x = bits(96)
        cents = x & 0x7FFFFFF  # 27 bits: up to 1,342,177.27 -> fits DECIMAL(12,2)
        created = base + i * 29 + (x >> 27) % 20
        ship = (x >> 32) & 0xFFFF
        coupon = (x >> 48) & 0xFF
        yield (
            i,
            1 + (x >> 56) % 50_000,
            names[(x >> 72) % nn],
            CITIES[(x >> 84) % nc],
            f"{cents // 100}.{cents % 100:02d}",
            1 + (x >> 40) % 20,
            ts(created),
            COUPONS[coupon % nk] if coupon < 51 else None,
            None if ship < 9830 else ts(created + 3600 + ship * 13),
        )


def _marker(rows: int, seed: int) -> str:
    return f"{VERSION}:{rows}:{seed}"


def ensure_demo_db(
    path: str | Path, *, rows: int = DEFAULT_ROWS, seed: int = 7
) -> tuple[Path, bool]:
    """Create the database unless a complete one with the same marker exists.
    Returns (path, created)."""
    db = Path(path)
    marker = db.with_name(db.name + ".version")
    want = _marker(rows, seed)
    if db.exists() and marker.exists() and marker.read_text().strip() == want:
        return db, False
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(db.name + ".tmp")
    tmp.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute(SCHEMA)
        gen = _rows(rows, seed)
        while True:
            batch = [r for _, r in zip(range(BATCH), gen, strict=False)]
            if not batch:
                break
            con.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?)", batch)
        con.commit()
    finally:
        con.close()
    # the rename is the commit point: a crash never leaves a half-filled cached database
    tmp.replace(db)
    marker.write_text(want + "\n")
    return db, True


if __name__ == "__main__":
    t0 = time.monotonic()
    p, made = ensure_demo_db(".sluiceway/demo/demo.db")
    print(f"{p} ({'created' if made else 'cached'}) in {time.monotonic() - t0:.1f}s")
