"""``vitpss train`` and ``vitpss eval``: train with a patch sampling schedule; evaluate a checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from ..config import (DEFAULT_MODEL, RECIPE_FIELDS, TrainConfig, budget_recipe, field_names, from_dict, load_config,
                      validate)
from ..errors import UsageError
from .common import add_checkpoint_options, add_common_options, add_config_arguments, check_common_options, parse_rate


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Optional[dict[str, Any]]]:
    """``(config, checkpoint or None)`` from parsed ``train`` flags: defaults < --config file < flags."""
    given = {k: v for k, v in vars(args).items() if k in field_names()}
    if given.get("resume"):
        from ..trainer import resume_config

        if hasattr(args, "config"):
            raise UsageError("--config cannot be combined with --resume: a resumed run uses its saved config")
        cfg, ckpt, _ = resume_config(given["resume"], given)
        return cfg, ckpt
    base = load_config(args.config) if hasattr(args, "config") else TrainConfig()
    cfg = validate(from_dict(given, base=base, source="command line"))
    if cfg.budget is not None and cfg.budget_epochs is None and not hasattr(args, "config") \
            and not any(name in given for name in RECIPE_FIELDS):
        name, recipe = budget_recipe(cfg.budget, cfg.epochs)
        cfg = validate(from_dict(recipe, base=cfg, source="budget recipe"))
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())
        print(f"budget {cfg.budget:g}: the {name} recipe ({flags}), the budget study's choice for this budget "
              f"(docs/budget.md); name any recipe flag to choose your own", flush=True)
    return cfg, None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    p = subparsers.add_parser("train",
                              description="Train a timm ViT with a patch sampling schedule. With no arguments: "
                              f"{DEFAULT_MODEL} on the embedded MNIST subset, keep rate rising from 0.2 to 1 (cosine) "
                              "with random patches; with --data DIR and no --model, a small ViT sized for the images. "
                              "Under torchrun: data-parallel.")
    add_config_arguments(p)
    p.set_defaults(func=run_train)
    e = subparsers.add_parser("eval", description="Top-1/top-5 accuracy and loss of a checkpoint on its run's "
                              "validation data (or --data), at all patches or at --keep-rate (the random sampler's "
                              "draw seeded by the run's seed: the same number as 'vitpss sweep' gives at that rate).")
    add_checkpoint_options(e)
    e.add_argument("--keep-rate", type=parse_rate, default=None, help="share of patches kept at inference (default: 1)")
    add_common_options(e, defaults={"device": "auto", "amp": "auto"},
                       shown={"sampler": "the run's", "batch_size": "the run's", "workers": "the run's"})
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.set_defaults(func=run_eval)


def _one_line(message: str) -> str:
    """The user's message of an error re-raised from a DataLoader worker (which adds a traceback)."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message
    last = lines[-1]
    return last.split("UsageError: ", 1)[-1]


def run_train(args: argparse.Namespace) -> int:
    from ..engine import NonFiniteLossError
    from ..trainer import train

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
    from ..checkpoint import checkpoint_path
    from ..inference import evaluate_at, load_checkpoint
    from ..runtime import amp_settings, num_threads

    check_common_options(args)
    with num_threads(args.threads):
        loaded = load_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size, device=args.device,
                                 sampler=args.sampler, workers=args.workers, ema=args.ema)
        try:
            result = evaluate_at(loaded.model, loaded.val_loader, args.keep_rate, seed=loaded.cfg.seed,
                                 amp_dtype=amp_settings(args.amp, loaded.device)[0])
        except UsageError as err:
            raise UsageError(_one_line(str(err))) from None
    rate = 1.0 if args.keep_rate is None else args.keep_rate
    print(f"acc1 {result['acc1']:.2f}  acc5 {result['acc5']:.2f}  loss {result['loss']:.4f}  "
          f"keep rate {rate:g}  sampler {loaded.sampler}  images {result['images']}  "
          f"({checkpoint_path(args.checkpoint)})")
    return 0
