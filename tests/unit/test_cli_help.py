"""Every help screen of the CLI ends with a runnable-looking example, and `init`'s choice of
mode follows the table's size and key."""

from __future__ import annotations

import argparse
import shlex

import pytest

from sluiceway.cli import init
from sluiceway.cli import main as cli
from sluiceway.common.domain.events import SchemaField
from sluiceway.common.sources import Introspection


def _screens(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _screens(child, (*path, name))


SCREENS = list(_screens(cli.build_parser()))


def test_every_command_has_a_help_screen_with_an_example() -> None:
    names = {" ".join(p) for p, _ in SCREENS}
    assert names == set(cli.EXAMPLES), "EXAMPLES and the commands differ"
    assert {"init", "doctor", "run", "schedule list"} <= names


@pytest.mark.parametrize("path", [p for p, _ in SCREENS], ids=lambda p: " ".join(p) or "sluiceway")
def test_each_examples_command_parses(path: tuple[str, ...]) -> None:
    """The example is on the screen, and each of its sluiceway commands parses."""
    parser = dict(SCREENS)[path]
    screen = parser.format_help()
    example = cli.EXAMPLES[" ".join(path)]
    assert example.splitlines()[0] in screen
    for line in example.splitlines():
        for command in line.split("&&"):
            words = shlex.split(command)
            assert words[0] == "sluiceway"
            cli.build_parser().parse_args(words[1:])  # raises Failure when it does not parse


def _info(rows: int, pk: tuple[SchemaField, ...] = ()) -> Introspection:
    return Introspection(
        schema=(SchemaField("id", "int64", False),), row_estimate=rows, primary_key=pk
    )


INT_PK = (SchemaField("id", "int64", False),)


@pytest.mark.parametrize(
    ("rows", "pk", "mode", "size"),
    [
        (0, INT_PK, "full", 0),
        (999_999, INT_PK, "full", 0),
        (1_000_000, INT_PK, "chunked", 100_000),
        (50_000_000, INT_PK, "chunked", 2_000_000),
        (8_000_000, INT_PK, "chunked", 500_000),
        (5_000_000, (SchemaField("id", "extension<arrow.uuid>", False),), "full", 0),
        (5_000_000, (*INT_PK, SchemaField("b", "int64", False)), "full", 0),
        (5_000_000, (), "full", 0),
    ],
)
def test_init_chooses_the_mode_by_size_and_key(
    rows: int, pk: tuple[SchemaField, ...], mode: str, size: int
) -> None:
    choice = init.choose(_info(rows, pk))
    assert (choice.mode, choice.chunk_size) == (mode, size)
    if mode == "chunked":
        assert choice.chunk_column == "id" and f"{rows:,} rows" in choice.why
