"""Argument helpers the commands share (no command imports another).

Options that several commands take are spelled and explained once: a :class:`TrainConfig`
field's flag, type and help text (``vitpss train`` and ``pretrain`` take every field that way,
:func:`add_config_arguments`), and :data:`COMMON_OPTIONS` names the ones the other commands add
with :func:`add_common_options`, each with its own default. A new shared option is one more
TrainConfig field (or :data:`EXTRA_OPTIONS` entry) and one more name in the commands' lists.

This module and the commands' registration import no torch: ``vitpss CMD --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import MODEL_OVERRIDES, TrainConfig, check_setting, field_types
from ..errors import UsageError

#: Options shared by the commands that run a model (train, eval, sweep, plan, step-time, pretrain):
#: ``sampler`` only where a keep rate below 1 is evaluated.
COMMON_OPTIONS = ("threads", "device", "amp", "sampler", "batch_size", "workers")
#: Shared options that are not TrainConfig fields: name -> add_argument keywords (help included).
EXTRA_OPTIONS: dict[str, dict[str, Any]] = {}


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _field_argument(name: str, shown_default: Any) -> dict[str, Any]:
    """add_argument keywords of TrainConfig field ``name`` (its type, choices, const and help text)."""
    if name in EXTRA_OPTIONS:
        return dict(EXTRA_OPTIONS[name])
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    kind, _ = field_types()[name]
    help_text = f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {shown_default})"
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction, "help": help_text}
    kwargs: dict[str, Any] = {"type": kind, "metavar": name.upper(), "help": help_text}
    if "const" in f.metadata:
        kwargs.update(nargs="?", const=f.metadata["const"])
    return kwargs


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field (defaults suppressed: only given flags appear)."""
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file of settings (keys as the flags, '-' or '_'); flags override it")
    add_field_arguments(parser, [f.name for f in dataclasses.fields(TrainConfig)])


def _shown_default(name: str) -> Any:
    """The default of TrainConfig field ``name`` as help states it."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if "shown" in f.metadata:
        return f.metadata["shown"]
    return "model's" if f.default is None and name in MODEL_OVERRIDES else f.default


def add_field_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """``--flag`` of each TrainConfig field in ``names``, as ``vitpss train`` has it (only given flags appear)."""
    for name in names:
        parser.add_argument(flag(name), default=argparse.SUPPRESS, **_field_argument(name, _shown_default(name)))


def add_common_options(parser: argparse.ArgumentParser, names: Sequence[str] = COMMON_OPTIONS, *,
                       defaults: Mapping[str, Any] = {}, shown: Mapping[str, str] = {}) -> None:
    """The shared options ``names``, with the help text of :func:`add_config_arguments`.

    ``defaults[name]`` is the parsed default (else None: "not given"); ``shown[name]`` the default
    the help states (else ``defaults[name]``, else TrainConfig's).
    """
    for name in names:
        value = defaults.get(name)
        text = shown.get(name, value if name in defaults else _shown_default(name))
        parser.add_argument(flag(name), default=value, **_field_argument(name, text))


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--data`` of the commands that evaluate a trained model."""
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint file, or a run directory (its checkpoint.pt)")
    parser.add_argument("--data", default=None, help="evaluate on other data with the same classes (default: the "
                        "run's)")


def check_common_options(args: argparse.Namespace) -> None:
    """UsageError for a shared option out of range or not a choice (as ``vitpss train`` checks it)."""
    for name in COMMON_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            check_setting(name, value)


def parse_rates(text: str) -> list[float]:
    """``"1.0,0.8,0.5"`` -> ``[1.0, 0.8, 0.5]``; UsageError for anything outside (0, 1]."""
    from ..patching import check_keep_rate

    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"keep rates {text!r} are not numbers: write them like 1.0,0.8,0.6") from None
    try:
        if not rates:
            raise ValueError
        return [check_keep_rate(r) for r in rates]
    except ValueError:
        raise UsageError(f"keep rates {text!r}: each must be in (0, 1], e.g. 1.0,0.8,0.6") from None


def parse_rate(text: str) -> float:
    """One keep rate for ``--keep-rate``; UsageError unless it is a number in (0, 1]."""
    from ..patching import check_keep_rate

    try:
        rate = float(text)
    except ValueError:
        raise UsageError(f"--keep-rate={text} is not a number: give one in (0, 1], e.g. 0.5") from None
    try:
        return check_keep_rate(rate)
    except ValueError:
        raise UsageError(f"--keep-rate={rate} is out of range: it must be in (0, 1]") from None
