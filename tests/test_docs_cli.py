"""docs/cli.md and ``--help`` agree: each command's options table lists exactly the options its parser has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vitpss.cli import COMMANDS, build_parser, command_parser

DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
TABLE = re.compile(r"Options of `vitpss ([^`]+)`:\n\n\| option \| default \| meaning \|\n\|---\|---\|---\|\n((?:\|.*\n?)*)")


def documented() -> dict[str, set[str]]:
    """Command -> the flags in the first column of its options table in docs/cli.md."""
    tables = {}
    for name, body in TABLE.findall(DOC):
        assert name not in tables, f"two options tables for vitpss {name}"
        tables[name] = {flag for row in body.splitlines() for flag in re.findall(r"`(--[\w-]+)`", row.split(" | ")[0])}
    return tables


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Command (``plot NAME`` for each figure) -> its parser."""
    root, found = build_parser(), {}
    for name in COMMANDS:
        parser = command_parser(root, name)
        figures = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for figure in (figures[0].choices if figures else {}):
            found[f"{name} {figure}"] = command_parser(parser, figure)
        if not figures:
            found[name] = parser
    return found


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def test_every_command_has_one_options_table_and_no_table_names_a_missing_command():
    assert set(documented()) == set(parsers())


@pytest.mark.parametrize("command", sorted(parsers()))
def test_options_table_lists_exactly_the_options_of_help(command):
    in_help, in_docs = options(parsers()[command]), documented()[command]
    assert not in_help - in_docs, f"vitpss {command} --help has options docs/cli.md lacks: {sorted(in_help - in_docs)}"
    assert not in_docs - in_help, f"docs/cli.md lists options vitpss {command} lacks: {sorted(in_docs - in_help)}"
