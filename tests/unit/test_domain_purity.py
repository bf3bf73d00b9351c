"""domain/ packages stay pure: no I/O library is imported there (the lint rule)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "asyncio",
    "nats",
    "grpc",
    "duckdb",
    "pyarrow",
    "opentelemetry",
    "google",
    "psycopg",
    "adbc_driver_postgresql",
    "adbc_driver_manager",
    "sqlite3",
    "socket",
    "subprocess",
    "xxhash",
    "psutil",
    "os",
    "sluiceway.v1",
}


def _domain_files() -> list[Path]:
    return [
        p
        for p in ROOT.glob("**/domain/**/*.py")
        if ".venv" not in p.parts and "tests" not in p.parts
    ]


def test_there_are_domain_packages() -> None:
    assert len(_domain_files()) >= 4


def test_domain_modules_import_no_io_library() -> None:
    offenders = []
    for path in _domain_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders
