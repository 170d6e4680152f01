"""Argument helpers the commands share (no command imports another)."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import TrainConfig, field_types
from ..errors import UsageError
from ..models import MODEL_OVERRIDES


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field (defaults suppressed: only given flags appear)."""
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file of settings (keys as the flags, '-' or '_'); flags override it")
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        kind, _ = types[f.name]
        flag = "--" + f.name.replace("_", "-")
        shown = "model's" if f.default is None and f.name in MODEL_OVERRIDES else f.default
        help_text = f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {shown})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif "const" in f.metadata:
            parser.add_argument(flag, nargs="?", const=f.metadata["const"], type=kind, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def parse_rates(text: str) -> list[float]:
    """``"1.0,0.8,0.5"`` -> ``[1.0, 0.8, 0.5]``; UsageError for anything outside (0, 1]."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"keep rates {text!r} are not numbers: write them like 1.0,0.8,0.6") from None
    bad = [r for r in rates if not 0 < r <= 1]
    if not rates or bad:
        raise UsageError(f"keep rates {text!r}: each must be in (0, 1], e.g. 1.0,0.8,0.6")
    return rates
