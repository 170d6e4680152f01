"""Command-line front end: ``vitpss <command> ...``.

Each module of ``vitpss.commands`` registers its subcommands through ``register(subparsers)``
and sets ``func=<callable(args) -> int>``; this is the only module outside ``commands/`` that
names them (tests/test_layers.py checks it). User mistakes surface as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import UsageError

# Command modules, in the order their subcommands appear in --help.
COMMAND_MODULES = ["vitpss.commands.train", "vitpss.commands.pretrain", "vitpss.commands.sweep",
                   "vitpss.commands.plot", "vitpss.commands.plan", "vitpss.commands.step_time"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--epoch 3` must not silently mean `--epochs 3`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitpss", description="Patch Sampling Schedules for Vision Transformer training.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vitpss {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"vitpss: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitpss: interrupted", file=sys.stderr)
        return 130
