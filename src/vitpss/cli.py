"""Command-line front end: ``vitpss <command> ...``.

Each module of ``vitpss.commands`` registers its subcommands through ``register(subparsers)``
and sets ``func=<callable(args) -> int>``; this is the only module outside ``commands/`` that
names them (tests/test_layers.py checks it). User mistakes surface as one line on stderr and exit status 2.

Imports are lazy: ``vitpss --help`` lists the commands from :data:`COMMANDS` without importing
any of them, and ``vitpss CMD ...`` imports the one module that defines ``CMD`` (whose own
imports of torch and timm wait until the command runs), so help answers without loading torch.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from typing import Optional, Sequence

from .errors import UsageError

#: Every command, in the order of --help: its module and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vitpss.commands.train", "train a ViT with a patch sampling schedule"),
    "eval": ("vitpss.commands.train", "accuracy of a checkpoint (optionally at a keep rate)"),
    "pretrain": ("vitpss.commands.pretrain", "SimMIM masked image modelling (then: vitpss train --pretrained)"),
    "sweep": ("vitpss.commands.sweep", "accuracy, throughput and GFLOPs of one checkpoint at many keep rates"),
    "plot": ("vitpss.commands.plot", "draw a figure (schedule, train-time, curves, sweep, patches, ...)"),
    "plan": ("vitpss.commands.plan", "predict the compute and time of a schedule before training"),
    "step-time": ("vitpss.commands.step_time", "time a timm ViT training step at each keep rate"),
}
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--epoch 3` must not silently mean `--epochs 3`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Subparsers(argparse._SubParsersAction):
    """Subparsers that take each command's one-line help from :data:`COMMANDS` (one place)."""

    def add_parser(self, name: str, **kwargs):
        kwargs.setdefault("help", COMMANDS[name][1] if name in COMMANDS else None)
        return super().add_parser(name, **kwargs)


def _command_of(argv: Sequence[str]) -> Optional[str]:
    """The command named in ``argv`` (its first word not starting with '-'), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``vitpss`` parser: every command fully when ``argv`` is None, else only the module ``argv`` needs."""
    parser = _Parser(prog="vitpss", description="Patch Sampling Schedules for Vision Transformer training.")
    parser.register("action", "parsers", _Subparsers)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vitpss {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    wanted = COMMAND_MODULES if argv is None else [COMMANDS[c][0] for c in [_command_of(argv)] if c]
    for name, (module, _) in COMMANDS.items():
        if module in wanted:
            if name == next(n for n, (m, _) in COMMANDS.items() if m == module):  # a module registers all its commands
                importlib.import_module(module).register(subparsers)
        else:  # listed in --help; parsed only when named
            subparsers.add_parser(name, add_help=False)
    return parser


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` within ``parser``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand that ``args`` names (``vitpss plot schedule``: the figure's)."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if name is None:
            return parser
        parser = action.choices[name]


def unknown_arguments(extra: Sequence[str], sub: argparse.ArgumentParser) -> str:
    """``unrecognized arguments: ...`` with a "did you mean" for each unknown flag close to a known one."""
    known = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for flag in (a.split("=", 1)[0] for a in extra if a.startswith("--")):
        match = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if match:
            hints.append(f"{flag}: did you mean {match[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            sub = _innermost(parser, args)
            sub.error(unknown_arguments(extra, sub))
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"vitpss: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitpss: interrupted", file=sys.stderr)
        return 130
