"""Every example config under examples/ loads: the documentation's examples stay true."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.common.config import load_file

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_is_an_example_for_each_mode() -> None:
    modes = {spec.mode for path in EXAMPLES for spec in load_file(path).values()}
    assert {"full", "chunked", "incremental", "time_window"} <= modes


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_loads(path: Path) -> None:
    specs = load_file(path)
    assert specs and all(spec.destination for spec in specs.values())
