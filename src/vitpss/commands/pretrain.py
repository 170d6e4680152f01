"""``vitpss pretrain``: SimMIM masked image modelling, then fine-tune with ``vitpss train --pretrained``.

The job reuses the training job's pieces: the same settings and flags (data, model, optimiser,
AMP, run directory; see :class:`~vitpss.config.TrainConfig`) plus ``--mask-ratio`` and
``--mask-patch-size``; the same data, model builder, loop (:func:`vitpss.engine.train_one_epoch`,
with all patches: SimMIM needs every position) and files. The model is a timm model built as for
``vitpss train`` with ``global_pool=''`` (its final norm feeds the decoder), wrapped in
:class:`~vitpss.simmim.SimMIM`.

Run directory: ``config.yaml`` (with a ``mask_ratio`` / ``mask_patch_size`` section),
``train_log.jsonl`` (per step: ``step, epoch, loss, lr, step_time, data_time, ...``),
``val_log.jsonl`` (per epoch: ``epoch, loss`` = masked-pixel L1 on the validation images with
fixed masks, ``epoch_time``), ``checkpoint.pt`` (``model``: ``encoder.*``, ``mask_token``,
``decoder.*``, as SimMIM's files; plus optimizer, LR schedule, step and config) and
``summary.json``. Classification-only settings (schedule, sampler, Mixup, label smoothing, EMA)
do not apply. ``vitpss plot reconstructions RUN_DIR --output F`` shows what the model fills in.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from typing import Any, Optional

import torch
import yaml
from timm.scheduler import CosineLRScheduler
from torch import nn

from .. import __version__
from ..checkpoint import PRETRAIN_FORMAT, JsonlWriter, atomic_save, atomic_write_json, atomic_write_text, rng_state
from ..config import MaskConfig, TrainConfig, config_to_dict, dump_yaml, field_names, from_dict, read_yaml, validate
from ..data import build_datasets, build_loader
from ..engine import NonFiniteLossError, all_reduce_sum, train_one_epoch
from ..optim import create_adamw
from ..timing import sync
from ..errors import UsageError
from ..models import build_simmim, resolve_model_config
from ..runtime import amp_settings, num_threads, prepare_output, seed_everything, setup_distributed
from ..simmim import SimMIM, check_mask_geometry, default_mask_patch_size
from .common import add_config_arguments

#: Settings of a training config that have no meaning when pre-training (reported if given).
CLASSIFICATION_ONLY = ("pretrained", "layer_decay", "schedule", "low", "high", "quantum", "cooldown_epochs",
                       "period_steps", "sampler", "mixup", "cutmix", "label_smoothing", "ema_decay", "num_classes",
                       "global_pool", "resume")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, MaskConfig]:
    """``(training-style config, mask config)``: defaults < ``--config`` YAML < flags."""
    values = read_yaml(args.config) if hasattr(args, "config") else {}
    mask_values = {k: values.pop(k) for k in ("mask_ratio", "mask_patch_size") if k in values}
    for key in ("mask_ratio", "mask_patch_size"):
        if getattr(args, key, None) is not None:
            mask_values[key] = getattr(args, key)
    given = {k: v for k, v in vars(args).items() if k in field_names()}
    ignored = sorted(k for k in {**values, **given} if k in CLASSIFICATION_ONLY)
    if "resume" in ignored:
        raise UsageError("vitpss pretrain cannot resume: start it again (or use fewer --epochs)")
    if ignored:
        print(f"vitpss pretrain: ignoring classification settings: {', '.join(ignored)}", file=sys.stderr)
    base = from_dict(values, source=getattr(args, "config", "config"))
    cfg = from_dict({**given, "schedule": "none", "global_pool": ""}, base=base, source="command line")
    try:
        mask = MaskConfig(**mask_values).validate()
    except TypeError as err:
        raise UsageError(f"mask settings: {err}") from None
    return validate(cfg), mask


@torch.no_grad()
def validation_loss(model: SimMIM, loader, device: torch.device, seed: int,
                    amp_dtype: Optional[torch.dtype] = None) -> float:
    """Mean masked-pixel L1 over ``loader`` with masks drawn from a fixed seed (comparable across epochs)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = model(x, model.random_mask(x.shape[0], device, generator))
        totals += torch.stack([loss.double() * x.shape[0], torch.tensor(float(x.shape[0]), device=device).double()])
    model.train(was_training)
    loss_sum, count = all_reduce_sum(totals).tolist()
    return loss_sum / max(count, 1.0)


def pretrain(cfg: TrainConfig, mask: MaskConfig) -> dict[str, Any]:
    """Run a whole SimMIM pre-training job (single process or under torchrun); returns the summary."""
    with num_threads(cfg.threads):
        return _pretrain(cfg, mask)


def _pretrain(cfg: TrainConfig, mask: MaskConfig) -> dict[str, Any]:
    d, device = setup_distributed(cfg.device)
    cfg = resolve_model_config(cfg)
    train_ds, val_ds, _, _, _ = build_datasets(dataclasses.replace(cfg, num_classes=None))
    mask_patch_size = mask.mask_patch_size or default_mask_patch_size(cfg.img_size, cfg.patch_size)
    try:
        check_mask_geometry(cfg.img_size, cfg.patch_size, mask_patch_size)
    except ValueError as err:
        raise UsageError(f"--mask-patch-size: {err}") from None
    mask = dataclasses.replace(mask, mask_patch_size=mask_patch_size)
    amp_dtype, scaler = amp_settings(cfg.amp, device)
    seed_everything(cfg.seed)
    generator = torch.Generator(device).manual_seed(cfg.seed + d.rank)
    model = build_simmim(cfg, mask, generator).to(device)
    seed_everything(cfg.seed + d.rank)
    train_loader = build_loader(train_ds, cfg, True, rank=d.rank, world_size=d.world_size, device=device)
    val_loader = build_loader(val_ds, cfg, False, rank=d.rank, world_size=d.world_size, device=device)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = create_adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.min_lr,
                                     warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
                                     warmup_lr_init=min(1e-6, cfg.lr), t_in_epochs=False)
    if cfg.output is None:
        cfg = dataclasses.replace(cfg, output=datetime.now().strftime("runs/pretrain-%Y%m%d-%H%M%S"))
    out = prepare_output(cfg, d, resuming=False)
    net: nn.Module = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    config_text = dump_yaml(cfg) + yaml.safe_dump(dataclasses.asdict(mask), sort_keys=False)
    train_log = val_log = None
    if d.main:
        atomic_write_text(out / "config.yaml", config_text)
        train_log, val_log = JsonlWriter(out / "train_log.jsonl"), JsonlWriter(out / "val_log.jsonl")
    step, train_time, images, last_val = 0, 0.0, 0, None

    def on_step(record: dict[str, Any]) -> bool:
        nonlocal step, train_time, images
        step, images = record["step"] + 1, images + record["images"]
        train_time += record["step_time"] + record["data_time"]
        if train_log is not None:
            train_log.write(record)
        return False

    try:
        for epoch in range(cfg.epochs):
            train_loader.sampler.set_epoch(epoch, 0)
            start_time = train_time
            result = train_one_epoch(
                net, train_loader, optimizer, schedule=lambda _: 1.0, epoch=epoch, start_step=step, device=device,
                loss_fn=lambda output, _: output[0], lr_scheduler=lr_scheduler, scaler=scaler, amp_dtype=amp_dtype,
                clip_grad=cfg.clip_grad, on_step=on_step)
            last_val = validation_loss(model, val_loader, device, cfg.seed, amp_dtype)
            if d.main:
                val_log.write({"epoch": epoch, "loss": last_val, "epoch_time": train_time - start_time})
                atomic_save({
                    "format": PRETRAIN_FORMAT, "vitpss_version": __version__, "config": config_to_dict(cfg),
                    "mask": dataclasses.asdict(mask), "step": step, "epoch": epoch + 1,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(), "rng": rng_state(generator),
                }, out / "checkpoint.pt")
                print(f"epoch {epoch + 1}/{cfg.epochs}  loss {result['loss']:.4f}  val loss {last_val:.4f}  "
                      f"({train_time - start_time:.1f} s)", flush=True)
    except NonFiniteLossError as err:
        raise UsageError(f"{err}: pre-training stopped; try a lower --lr or --clip-grad 1") from None
    finally:
        for log in (train_log, val_log):
            if log is not None:
                log.close()
    sync(device)
    summary = {"val_loss": last_val, "train_time_s": train_time, "images_per_s": images / max(train_time, 1e-9),
               "epochs": cfg.epochs, "steps": step, "model": cfg.model, "data": cfg.data, **dataclasses.asdict(mask),
               "world_size": d.world_size, "device": str(device)}
    if d.main:
        atomic_write_json(out / "summary.json", summary)
        print(f"val loss {last_val:.4f}  training time {train_time:.1f} s\nrun directory: {out}\n"
              f"fine-tune with: vitpss train --model {cfg.model} --pretrained {out / 'checkpoint.pt'}", flush=True)
    return summary


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
    cfg, mask = config_from_args(args)
    pretrain(cfg, mask)
    return 0
