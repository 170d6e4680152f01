"""What differs between supervised training and SimMIM pre-training: the model, the loss, the validation.

:class:`~vitpss.trainer.Trainer` runs either; the loop, checkpoints, logs, resume, DDP and AMP are
the same for both. A task builds its model, computes one micro-batch's loss, validates at an epoch
end and names the fields it adds to the checkpoint, ``config.yaml`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .checkpoint import CHECKPOINT_FORMAT, PRETRAIN_FORMAT
from .config import MaskConfig, TrainConfig
from .resolution import equivalent_keep_rates
from .schedules import KeepRateSchedule
from .engine import all_reduce_sum, evaluate
from .errors import UsageError
from .flops import FlopModel
from .models import build_model, build_simmim
from .simmim import SimMIM, check_mask_geometry, default_mask_patch_size

__all__ = ["ClassificationTask", "SimMIMTask", "Task", "validation_loss"]


class Task:
    """Interface of a training objective (see the module docstring); the defaults suit classification."""

    command = "train"  #: the ``vitpss`` command that runs it (named in messages)
    checkpoint_format = CHECKPOINT_FORMAT

    def resolve(self, cfg: TrainConfig, num_classes: int) -> TrainConfig:
        """``cfg`` completed once the data is known (called before :meth:`build_model`)."""
        return dataclasses.replace(cfg, num_classes=num_classes)

    def build_model(self, cfg: TrainConfig, generator: Optional[torch.Generator]) -> nn.Module:
        raise NotImplementedError

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch (a 0-dim tensor, left on the device)."""
        raise NotImplementedError

    def validate(self, model: nn.Module, ema: Optional[nn.Module], loader, device: torch.device,
                 amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
        """The validation record of an epoch end (``val_log.jsonl`` adds ``epoch`` and ``epoch_time``)."""
        raise NotImplementedError

    def score(self, record: dict[str, float]) -> Optional[float]:
        """Higher is better; None: the task keeps no ``best.pt``."""
        return None

    def checkpoint_fields(self) -> dict[str, Any]:
        return {}

    def config_text(self) -> str:
        """Text appended to ``config.yaml`` after the :class:`TrainConfig` fields."""
        return ""

    def summary(self, last: dict[str, float]) -> dict[str, Any]:
        """Task fields of ``summary.json`` that come first, from the last validation record."""
        return {}

    def summary_extras(self, state: Any, model: nn.Module, schedule: KeepRateSchedule) -> dict[str, Any]:
        """Task fields of ``summary.json`` after the common ones."""
        return {}

    def epoch_line(self, record: dict[str, float]) -> str:
        """The task's part of the line printed at an epoch end."""
        return ""

    def report(self, summary: dict[str, Any], out: Path) -> str:
        """What the run prints at its end."""
        return f"training time {summary['train_time_s']:.1f} s\nrun directory: {out}"


class ClassificationTask(Task):
    """Supervised classification: cross-entropy (soft targets under Mixup/CutMix), top-1/top-5 accuracy."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.mixup_fn: Optional[Mixup] = None
        self.loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def resolve(self, cfg: TrainConfig, num_classes: int) -> TrainConfig:
        self.cfg = cfg = super().resolve(cfg, num_classes)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                                  num_classes=num_classes)
            self.loss_fn = SoftTargetCrossEntropy()
        return cfg

    def build_model(self, cfg: TrainConfig, generator: Optional[torch.Generator]) -> nn.Module:
        return build_model(cfg, generator)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mixup_fn is not None:
            x, y = self.mixup_fn(x, y)
        return self.loss_fn(net(x), y)

    def validate(self, model, ema, loader, device, amp_dtype) -> dict[str, float]:
        val = evaluate(model, loader, device, amp_dtype=amp_dtype)
        record = {"acc1": val["acc1"], "acc5": val["acc5"], "loss": val["loss"]}
        if ema is not None:
            ema_val = evaluate(ema, loader, device, amp_dtype=amp_dtype)
            record.update(ema_acc1=ema_val["acc1"], ema_acc5=ema_val["acc5"], ema_loss=ema_val["loss"])
        return record

    def score(self, record: dict[str, float]) -> Optional[float]:
        return record["acc1"]

    def summary(self, last: dict[str, float]) -> dict[str, Any]:
        summary = {"acc1": last.get("acc1"), "acc5": last.get("acc5")}
        if "ema_acc1" in last:
            summary["ema_acc1"] = last["ema_acc1"]
        return summary

    def summary_extras(self, state: Any, model: nn.Module, schedule: KeepRateSchedule) -> dict[str, Any]:
        rates = schedule.rates()
        if self.cfg.tokens == "resize":  # the same FLOPs as sampling the token count the smaller image has
            rates = equivalent_keep_rates(rates, model.patch_embed.grid_size)
        with torch.random.fork_rng(devices=[]):
            fraction = FlopModel(model).compute_fraction(rates)
        return {"best_acc1": state.best_acc1, "best_epoch": state.best_epoch + 1 if state.best_epoch >= 0 else None, "schedule": self.cfg.schedule,
                "sampler": self.cfg.sampler, "compute_fraction": fraction, "mean_keep_rate": schedule.mean_keep_rate()}

    def report(self, summary: dict[str, Any], out: Path) -> str:
        return (f"acc1 {summary['acc1']:.2f}  best acc1 {summary['best_acc1']:.2f} (epoch {summary['best_epoch']})  "
                f"training time {summary['train_time_s']:.1f} s  compute fraction {summary['compute_fraction']:.3f}"
                f"\nrun directory: {out}")

    def epoch_line(self, record: dict[str, float]) -> str:
        ema = f"  ema acc1 {record['ema_acc1']:.2f}" if "ema_acc1" in record else ""
        return f"acc1 {record['acc1']:.2f}  acc5 {record['acc5']:.2f}{ema}"


@torch.no_grad()
def validation_loss(model: SimMIM, loader, device: torch.device, seed: int,
                    amp_dtype: Optional[torch.dtype] = None) -> float:
    """Mean masked-pixel L1 over ``loader`` with masks drawn from a fixed seed (comparable across epochs)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    images = 0  # on the host: a per-batch count on the device would be a blocking copy each batch
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = model(x, model.random_mask(x.shape[0], device, generator))
        loss_sum += loss.double() * x.shape[0]
        images += x.shape[0]
    model.train(was_training)
    loss_sum, count = all_reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(images)])).tolist()
    return loss_sum / max(count, 1.0)


class SimMIMTask(Task):
    """SimMIM masked image modelling: L1 on masked pixels, all patches kept (SimMIM needs every position)."""

    command = "pretrain"
    checkpoint_format = PRETRAIN_FORMAT

    def __init__(self, mask: MaskConfig) -> None:
        self.mask = mask
        self.seed = 0

    def resolve(self, cfg: TrainConfig, num_classes: int) -> TrainConfig:
        size = self.mask.mask_patch_size or default_mask_patch_size(cfg.img_size, cfg.patch_size)
        try:
            check_mask_geometry(cfg.img_size, cfg.patch_size, size)
        except ValueError as err:
            raise UsageError(f"--mask-patch-size: {err}") from None
        self.mask, self.seed = dataclasses.replace(self.mask, mask_patch_size=size), cfg.seed
        return cfg

    def build_model(self, cfg: TrainConfig, generator: Optional[torch.Generator]) -> nn.Module:
        return build_simmim(cfg, self.mask, generator)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(x)[0]

    def validate(self, model, ema, loader, device, amp_dtype) -> dict[str, float]:
        return {"loss": validation_loss(model, loader, device, self.seed, amp_dtype)}

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"mask": dataclasses.asdict(self.mask)}

    def config_text(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self.mask), sort_keys=False)

    def summary(self, last: dict[str, float]) -> dict[str, Any]:
        return {"val_loss": last.get("loss"), **dataclasses.asdict(self.mask)}

    def epoch_line(self, record: dict[str, float]) -> str:
        return f"val loss {record['loss']:.4f}"

    def report(self, summary: dict[str, Any], out: Path) -> str:
        return (f"val loss {summary['val_loss']:.4f}  {super().report(summary, out)}\n"
                f"fine-tune with: vitpss train --model {summary['model']} --pretrained {out / 'checkpoint.pt'}")
