"""``vitpss pretrain``: SimMIM masked image modelling, then fine-tune with ``vitpss train --pretrained``.

The same driver as ``vitpss train`` (:class:`~vitpss.trainer.Trainer` with a
:class:`~vitpss.tasks.SimMIMTask`): the same settings and flags (data, model, optimiser, AMP,
gradient accumulation, run directory, ``--resume``; see :class:`~vitpss.config.TrainConfig`) plus
``--mask-ratio`` and ``--mask-patch-size``, all patches kept (SimMIM needs every position). The
model is a timm model built as for ``vitpss train`` with ``global_pool=''`` (its final norm feeds
the decoder), wrapped in :class:`~vitpss.simmim.SimMIM`.

Run directory: as ``vitpss train``'s (``docs/run-directory.md``), with a ``mask_ratio`` /
``mask_patch_size`` section in ``config.yaml`` and a ``mask`` entry in ``checkpoint.pt``;
``val_log.jsonl`` holds per epoch ``epoch, loss`` (masked-pixel L1 on the validation images with
fixed masks) and ``epoch_time``; ``checkpoint.pt``'s ``model`` has SimMIM's keys (``encoder.*``,
``mask_token``, ``decoder.*``). Classification-only settings (schedule, sampler, Mixup, label
smoothing, EMA) do not apply. ``vitpss plot reconstructions RUN_DIR --output F`` shows what the
model fills in.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from typing import Any, Optional

from ..checkpoint import PRETRAIN_FORMAT
from ..config import MaskConfig, TrainConfig, field_names, from_dict, read_yaml, validate
from ..engine import NonFiniteLossError
from ..errors import UsageError
from ..tasks import SimMIMTask
from ..trainer import resume_config, train
from .common import add_config_arguments

#: Settings of a training config that have no meaning when pre-training (reported if given, then reset).
CLASSIFICATION_ONLY = ("pretrained", "layer_decay", "schedule", "low", "high", "quantum", "cooldown_epochs",
                       "period_steps", "sampler", "mixup", "cutmix", "label_smoothing", "ema_decay", "num_classes",
                       "global_pool", "tokens", "budget", "budget_epochs")
MASK_KEYS = ("mask_ratio", "mask_patch_size")


def _mask_config(values: dict[str, Any]) -> MaskConfig:
    try:
        return MaskConfig(**values).validate()
    except TypeError as err:
        raise UsageError(f"mask settings: {err}") from None


def resume_from_args(args: argparse.Namespace, given: dict[str, Any]) -> tuple[TrainConfig, MaskConfig, Optional[dict]]:
    """The saved config, mask and checkpoint of the run ``--resume`` names (mask flags cannot change)."""
    if hasattr(args, "config"):
        raise UsageError("--config cannot be combined with --resume: a resumed run uses its saved config")
    if any(getattr(args, key, None) is not None for key in MASK_KEYS):
        raise UsageError("--mask-ratio and --mask-patch-size cannot change when resuming: a resumed run keeps "
                         "its saved config")
    cfg, ckpt, path = resume_config(given["resume"], given, checkpoint_format=PRETRAIN_FORMAT, task_keys=MASK_KEYS)
    if ckpt is not None:
        return cfg, _mask_config(ckpt["mask"]), ckpt
    saved = read_yaml(path)
    return cfg, _mask_config({k: saved[k] for k in MASK_KEYS if k in saved}), None


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, MaskConfig, Optional[dict]]:
    """``(training-style config, mask config, checkpoint or None)``: defaults < ``--config`` YAML < flags."""
    given = {k: v for k, v in vars(args).items() if k in field_names()}
    if given.get("resume"):
        return resume_from_args(args, given)
    values = read_yaml(args.config) if hasattr(args, "config") else {}
    mask_values = {k: values.pop(k) for k in MASK_KEYS if k in values}
    for key in MASK_KEYS:
        if getattr(args, key, None) is not None:
            mask_values[key] = getattr(args, key)
    ignored = sorted(k for k in {**values, **given} if k in CLASSIFICATION_ONLY)
    if ignored:
        print(f"vitpss pretrain: ignoring classification settings: {', '.join(ignored)}", file=sys.stderr)
    defaults = TrainConfig()
    base = from_dict(values, source=getattr(args, "config", "config"))
    cfg = from_dict({**given, **{k: getattr(defaults, k) for k in CLASSIFICATION_ONLY}, "schedule": "none",
                     "global_pool": ""}, base=base, source="command line")
    if cfg.output is None:
        cfg = dataclasses.replace(cfg, output=datetime.now().strftime("runs/pretrain-%Y%m%d-%H%M%S"))
    return validate(cfg), _mask_config(mask_values), None


def pretrain(cfg: TrainConfig, mask: MaskConfig, checkpoint: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Run a whole SimMIM pre-training job (single process or under torchrun); returns the summary."""
    return train(cfg, checkpoint, task=SimMIMTask(mask))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` subcommand."""
    p = subparsers.add_parser("pretrain", help="SimMIM masked image modelling (then: vitpss train --pretrained)",
                              description="Pre-train a timm ViT/BEiT by SimMIM masked image modelling on the same "
                              "data options as 'vitpss train'; fine-tune with "
                              "'vitpss train --pretrained RUN/checkpoint.pt'.")
    add_config_arguments(p)
    p.add_argument("--mask-ratio", type=float, default=None, help="share of mask blocks masked (default: 0.6)")
    p.add_argument("--mask-patch-size", type=int, default=None,
                   help="mask block size in pixels, a multiple of the patch size "
                        "(default: 32 where it fits, else one patch)")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    cfg, mask, ckpt = config_from_args(args)
    try:
        pretrain(cfg, mask, ckpt)
    except NonFiniteLossError as err:
        print(f"vitpss: error: {err}", file=sys.stderr)
        return 1
    return 0
