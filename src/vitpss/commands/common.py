"""Argument helpers the commands share (no command imports another)."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import AMP_CHOICES, TrainConfig, field_types
from ..errors import UsageError
from ..patching import check_keep_rate
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
    try:
        if not rates:
            raise ValueError
        return [check_keep_rate(r) for r in rates]
    except ValueError:
        raise UsageError(f"keep rates {text!r}: each must be in (0, 1], e.g. 1.0,0.8,0.6") from None


def parse_rate(text: str) -> float:
    """One keep rate for ``--keep-rate``; UsageError unless it is a number in (0, 1]."""
    try:
        rate = float(text)
    except ValueError:
        raise UsageError(f"--keep-rate={text} is not a number: give one in (0, 1], e.g. 0.5") from None
    try:
        return check_keep_rate(rate)
    except ValueError:
        raise UsageError(f"--keep-rate={rate} is out of range: it must be in (0, 1]") from None


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    """``--amp`` as ``vitpss train`` takes it: auto (default: bf16 or fp16 on CUDA, off on CPU), off, bf16 or fp16."""
    parser.add_argument("--amp", nargs="?", const="auto", default="auto", choices=AMP_CHOICES,
                        help="mixed precision: auto (bf16 on CUDA where supported, else fp16; off on CPU), off, bf16, "
                             "fp16 (--amp alone = auto; default: auto)")
