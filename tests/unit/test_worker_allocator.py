"""The worker's Arrow memory pool: the system allocator unless the operator chose one."""

from __future__ import annotations

import os
import subprocess
import sys


def _pool(env: dict[str, str]) -> str:
    code = "from sluiceway.worker.main import use_system_allocator\nprint(use_system_allocator())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_worker_uses_the_system_allocator_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _pool(env) == "system"


def test_an_operator_choice_of_pool_is_kept() -> None:
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    assert _pool(env) == "jemalloc"
