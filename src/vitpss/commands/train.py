"""``vitpss train`` and ``vitpss eval``: train with a patch sampling schedule; evaluate a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Optional

from ..checkpoint import checkpoint_path
from ..config import DEFAULT_MODEL, TrainConfig, field_names, from_dict, load_config, validate
from ..data import build_datasets, build_loader
from ..engine import NonFiniteLossError, evaluate
from ..errors import UsageError
from ..models import model_from_checkpoint
from ..runtime import amp_settings, resolve_device
from ..trainer import resume_config, train
from .common import add_amp_argument, add_config_arguments, parse_rate


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Optional[dict[str, Any]]]:
    """``(config, checkpoint or None)`` from parsed ``train`` flags: defaults < --config file < flags."""
    given = {k: v for k, v in vars(args).items() if k in field_names()}
    if given.get("resume"):
        if hasattr(args, "config"):
            raise UsageError("--config cannot be combined with --resume: a resumed run uses its saved config")
        cfg, ckpt, _ = resume_config(given["resume"], given)
        return cfg, ckpt
    base = load_config(args.config) if hasattr(args, "config") else TrainConfig()
    return validate(from_dict(given, base=base, source="command line")), None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    p = subparsers.add_parser("train", help="train a ViT with a patch sampling schedule",
                              description="Train a timm ViT with a patch sampling schedule. With no arguments: "
                              f"{DEFAULT_MODEL} on the embedded MNIST subset, keep rate rising from 0.2 to 1 (cosine) with random patches. Under torchrun: data-parallel.")
    add_config_arguments(p)
    p.set_defaults(func=run_train)
    e = subparsers.add_parser("eval", help="accuracy of a checkpoint (optionally at a keep rate)")
    e.add_argument("--checkpoint", required=True, help="checkpoint file, or a run directory (its checkpoint.pt)")
    e.add_argument("--keep-rate", type=parse_rate, default=None, help="share of patches kept at inference (default 1)")
    e.add_argument("--data", default=None, help="evaluate on other data with the same classes (default: the run's)")
    e.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's)")
    e.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    add_amp_argument(e)
    e.set_defaults(func=run_eval)


def _one_line(message: str) -> str:
    """The user's message of an error re-raised from a DataLoader worker (which adds a traceback)."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message
    last = lines[-1]
    return last.split("UsageError: ", 1)[-1]


def run_train(args: argparse.Namespace) -> int:
    cfg, ckpt = config_from_args(args)
    try:
        train(cfg, checkpoint=ckpt)
    except UsageError as err:
        raise UsageError(_one_line(str(err))) from None
    except NonFiniteLossError as err:
        print(f"vitpss: error: {err}", file=sys.stderr)
        return 1
    return 0


def run_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, cfg = model_from_checkpoint(args.checkpoint, device, ema=args.ema)
    overrides = {k: getattr(args, k) for k in ("data", "batch_size", "workers") if getattr(args, k) is not None}
    cfg = validate(from_dict(overrides, base=cfg, source="command line"))
    _, val_ds, num_classes, _, _ = build_datasets(dataclasses.replace(cfg, num_classes=None))
    if num_classes != cfg.num_classes:
        raise UsageError(f"--data {cfg.data} has {num_classes} classes but the checkpoint's model has {cfg.num_classes}")
    loader = build_loader(val_ds, cfg, train=False, device=device)
    try:
        result = evaluate(model, loader, device, keep_rate=args.keep_rate, amp_dtype=amp_settings(args.amp, device)[0])
    except UsageError as err:
        raise UsageError(_one_line(str(err))) from None
    rate = 1.0 if args.keep_rate is None else args.keep_rate
    print(f"acc1 {result['acc1']:.2f}  acc5 {result['acc5']:.2f}  loss {result['loss']:.4f}  "
          f"keep rate {rate:g}  images {result['images']}  ({checkpoint_path(args.checkpoint)})")
    return 0

