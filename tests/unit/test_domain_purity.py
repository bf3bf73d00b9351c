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


def _parse(text: str) -> ast.AST:
    """ast.parse, tried a second time on "SystemError: AST constructor recursion depth
    mismatch": CPython 3.11 can raise it spuriously in a process that runs other threads
    (python/cpython#106905; seen once here, in a test process that had run many other tests).
    A second parse of the same text gives the tree or the real error."""
    try:
        return ast.parse(text)
    except SystemError as exc:
        if "recursion depth mismatch" not in str(exc):
            raise
        return ast.parse(text)


def test_there_are_domain_packages() -> None:
    assert len(_domain_files()) >= 4


def test_domain_modules_import_no_io_library() -> None:
    offenders = []
    for path in _domain_files():
        for node in ast.walk(_parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders
