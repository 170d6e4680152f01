"""Supervised training with a patch sampling schedule: :class:`Trainer` and :func:`train`.

The job, top to bottom (:func:`train`): resolve the config, set up data-parallel processes (under
``torchrun``), build data, model (timm + :func:`vitpss.attach`), AdamW, per-step cosine LR with
warm-up, optional Mixup/CutMix, EMA and AMP; restore a checkpoint when resuming; then per epoch:
:func:`vitpss.engine.train_one_epoch` (keep rate = ``schedule(global step)``), evaluation at all
patches, logs and checkpoints; finally ``summary.json``. Process set-up lives in
:mod:`vitpss.runtime`, model building in :mod:`vitpss.models`, the command line in ``commands/train.py``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from . import __version__
from .checkpoint import (
    CHECKPOINT_FORMAT, JsonlWriter, RESUME_CANDIDATES, atomic_copy, atomic_save, atomic_write_json, atomic_write_text,
    find_resume_checkpoint, load_model_state, read_jsonl, remove_stale_temporaries, rng_state, set_rng_state,
    truncate_jsonl,
)
from .config import (
    RESUME_OVERRIDABLE, TrainConfig, config_to_dict, dump_yaml, from_dict, load_config, schedule_from_config, validate,
)
from .data import build_datasets, build_loader
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .errors import UsageError
from .flops import FlopModel
from .timing import time_vs_all_patches
from .models import build_model, resolve_model_config
from .optim import create_adamw
from .runtime import (
    Dist, amp_settings, compile_for_schedule, num_threads, prepare_output, seed_everything, setup_distributed,
)
from .weights import load_pretrained

__all__ = ["RunState", "Trainer", "resume_config", "train"]


def resume_config(resume: str, overrides: dict[str, Any]) -> tuple[TrainConfig, Optional[dict[str, Any]], Path]:
    """The config of the run to resume (from its checkpoint) with run-control ``overrides`` applied.

    Only :data:`~vitpss.config.RESUME_OVERRIDABLE` fields may differ; ``max_steps`` is not
    inherited. The output directory defaults to the checkpoint's directory. A run directory
    resumes from its newest valid checkpoint; damaged ones are named on stderr (rank 0). A run
    directory without any checkpoint yet (killed during its first step) restarts from step 0 with
    its ``config.yaml``; the checkpoint returned is then None.
    """
    main_rank = os.environ.get("RANK", "0") == "0"
    warn = (lambda message: print(f"vitpss: warning: {message}", file=sys.stderr, flush=True)) if main_rank else None
    directory = Path(resume)
    if main_rank and directory.is_dir():
        remove_stale_temporaries(directory)
    ckpt: Optional[dict[str, Any]] = None
    if (directory.is_dir() and (directory / "config.yaml").is_file()
            and not any((directory / name).is_file() for name in RESUME_CANDIDATES)):
        path = directory / "config.yaml"
        saved = config_to_dict(load_config(path))
        if main_rank:
            print(f"no checkpoint in {directory} yet: restarting the run from step 0 with {path}", flush=True)
    else:
        path, ckpt = find_resume_checkpoint(resume, warn)
        saved = ckpt["config"]
        if main_rank:
            print(f"resuming from {path} (step {ckpt['step']})", flush=True)
    changed = sorted(k for k, v in overrides.items() if k not in RESUME_OVERRIDABLE and v != saved.get(k))
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(f"{flags} cannot change when resuming: a resumed run keeps its saved config "
                         f"(allowed: {', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_OVERRIDABLE))})")
    values = {**saved, "max_steps": None, "overwrite": ckpt is None, **overrides,
              "resume": None if ckpt is None else str(path)}
    values.setdefault("output", None)
    if "output" not in overrides:
        values["output"] = str(path.parent)
    return validate(from_dict(values, source=f"config in {path}")), ckpt, path



def _progress_enabled(cfg: TrainConfig, d: Dist) -> bool:
    return d.main and not cfg.quiet and sys.stderr.isatty()


# --------------------------------------------------------------------------- the job


@dataclasses.dataclass
class RunState:
    """Counters carried across epochs and checkpoints."""

    step: int = 0
    best_acc1: float = -1.0
    best_epoch: int = -1
    train_time_s: float = 0.0  # steps and data waits only
    wall_time_s: float = 0.0  # the whole loop: steps, logging, evaluations, checkpoints (to the last save)
    cpu_time_s: float = 0.0  # this process's CPU time over the same span (robust to other load on the machine)
    epoch_time_s: float = 0.0  # training time of the current, unfinished epoch
    images: int = 0
    last_val: Optional[dict[str, float]] = None


class Trainer:
    """Holds the objects of one run; :meth:`run` is the epoch loop. Built by :func:`train`."""

    def __init__(self, cfg: TrainConfig, checkpoint: Optional[dict[str, Any]] = None) -> None:
        self.d, self.device = setup_distributed(cfg.device)
        cfg = resolve_model_config(cfg)
        train_ds, val_ds, num_classes, _, _ = build_datasets(cfg)
        self.cfg = cfg = dataclasses.replace(cfg, num_classes=num_classes)
        self.amp_dtype, self.scaler = amp_settings(cfg.amp, self.device)
        seed_everything(cfg.seed)
        self.generator = None
        if cfg.sampler == "random":
            self.generator = torch.Generator(self.device).manual_seed(cfg.seed + self.d.rank)
        self.model = build_model(cfg, self.generator).to(self.device)
        if cfg.pretrained and checkpoint is None:  # a resumed run restores its own weights
            report = load_pretrained(self.model, cfg.pretrained)
            if self.d.main:
                print(f"pretrained weights from {cfg.pretrained}: {report.summary()}", flush=True)
        seed_everything(cfg.seed + self.d.rank)  # per-rank randomness (drop path, Mixup)
        self.train_loader = build_loader(train_ds, cfg, True, rank=self.d.rank, world_size=self.d.world_size,
                                         device=self.device)
        self.val_loader = build_loader(val_ds, cfg, False, rank=self.d.rank, world_size=self.d.world_size,
                                       device=self.device)
        self.steps_per_epoch = len(self.train_loader)
        self.schedule = schedule_from_config(cfg, self.steps_per_epoch)
        self.optimizer = create_adamw(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        self.lr_scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.schedule.total_steps, lr_min=cfg.min_lr,
            warmup_t=round(cfg.warmup_epochs * self.steps_per_epoch), warmup_lr_init=min(1e-6, cfg.lr), t_in_epochs=False)
        self.mixup_fn = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                                  num_classes=num_classes)
            self.loss_fn: nn.Module = SoftTargetCrossEntropy()
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.state = RunState()
        if checkpoint is not None:
            self.restore(checkpoint)
        # Clock origins shifted by the time already spent, so a resumed run keeps adding to it.
        self.wall_origin = time.perf_counter() - self.state.wall_time_s
        self.cpu_origin = time.process_time() - self.state.cpu_time_s
        self.out = prepare_output(cfg, self.d, resuming=checkpoint is not None)
        self.net: nn.Module = self.model
        if self.d.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = compile_for_schedule(self.net, self.schedule, warn=self.d.main)

    # ---- checkpoints

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Load model, optimizer, LR schedule, scaler, EMA, counters and RNG states of a checkpoint."""
        source = self.cfg.resume or "checkpoint"
        if ckpt["world_size"] != self.d.world_size:
            raise UsageError(f"{source} was written by {ckpt['world_size']} processes; resume with the same number "
                             f"(torchrun --nproc_per_node={ckpt['world_size']}), now {self.d.world_size}")
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise UsageError(f"{source} had {ckpt['steps_per_epoch']} steps per epoch, the data now gives "
                             f"{self.steps_per_epoch}: resume with the same data and batch size")
        load_model_state(self.model, ckpt["model"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        self.lr_scheduler.step_update(ckpt["step"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.state = RunState(**ckpt["run_state"])
        set_rng_state(ckpt["rng"][self.d.rank], self.generator)

    def save(self, name: str = "checkpoint.pt") -> Optional[Path]:
        """Write the full state (every rank takes part: RNG states are gathered to rank 0)."""
        self.update_clocks()
        states = [rng_state(self.generator)]
        if self.d.world_size > 1:
            states = [None] * self.d.world_size
            dist.all_gather_object(states, rng_state(self.generator))
        if not self.d.main:
            return None
        ckpt = {
            "format": CHECKPOINT_FORMAT, "vitpss_version": __version__, "config": config_to_dict(self.cfg),
            "step": self.state.step, "epoch": self.state.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.d.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "run_state": dataclasses.asdict(self.state), "rng": states,
        }
        path = self.out / name
        atomic_save(ckpt, path)
        return path

    def update_clocks(self) -> None:
        self.state.wall_time_s = time.perf_counter() - self.wall_origin
        self.state.cpu_time_s = time.process_time() - self.cpu_origin

    # ---- logs

    def open_logs(self, resuming: bool) -> None:
        self.train_log = self.val_log = None
        if not self.d.main:
            return
        atomic_write_text(self.out / "config.yaml", dump_yaml(self.cfg))
        if resuming:  # drop records past the checkpoint (written after it, before the interruption)
            step, epoch = self.state.step, self.state.step // self.steps_per_epoch
            truncate_jsonl(self.out / "train_log.jsonl", lambda r: r.get("step", -1) < step)
            truncate_jsonl(self.out / "val_log.jsonl", lambda r: r.get("epoch", -1) < epoch)
            st, source = self.state, Path(self.cfg.resume or "")
            if (self.cfg.resume and st.best_epoch >= 0 and step == (st.best_epoch + 1) * self.steps_per_epoch
                    and source.name != "best.pt"):
                atomic_copy(source, self.out / "best.pt")  # redo the copy to best.pt that a crash may have cut
        self.train_log = JsonlWriter(self.out / "train_log.jsonl")
        self.val_log = JsonlWriter(self.out / "val_log.jsonl")

    def close_logs(self) -> None:
        for log in (self.train_log, self.val_log):
            if log is not None:
                log.close()

    # ---- loop

    def on_step(self, record: dict[str, Any], bar: Optional[tqdm]) -> bool:
        """Log one step; write mid-epoch checkpoints; True when --max-steps is reached."""
        st, cfg = self.state, self.cfg
        st.step = record["step"] + 1
        st.train_time_s += record["step_time"] + record["data_time"]
        st.epoch_time_s += record["step_time"] + record["data_time"]
        st.images += record["images"]
        if self.train_log is not None:
            self.train_log.write(record)
        if bar is not None:
            ips = cfg.batch_size * self.d.world_size / max(record["step_time"] + record["data_time"], 1e-9)
            bar.set_postfix(loss=f"{record['loss']:.3f}", keep=f"{record['keep_rate']:.2f}", img_s=f"{ips:.0f}",
                            refresh=False)
            bar.update()
        stop = cfg.max_steps is not None and st.step >= cfg.max_steps
        epoch_end = st.step % self.steps_per_epoch == 0
        # At an epoch end, end_epoch() evaluates first, then saves: a checkpoint written here, before the
        # evaluation, would let a crash in between skip that epoch's evaluation on resume.
        if not epoch_end and (stop or (cfg.save_every_steps and st.step % cfg.save_every_steps == 0)):
            self.save()
        return stop and not epoch_end

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        skip = self.state.step - epoch * self.steps_per_epoch
        self.train_loader.sampler.set_epoch(epoch, skip * self.cfg.batch_size)
        if skip == 0:
            self.state.epoch_time_s = 0.0
        bar = None
        if _progress_enabled(self.cfg, self.d):
            bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                       leave=False, dynamic_ncols=True)
        try:
            return train_one_epoch(
                self.net, self.train_loader, self.optimizer, schedule=self.schedule, epoch=epoch,
                start_step=self.state.step, device=self.device, loss_fn=self.loss_fn, lr_scheduler=self.lr_scheduler,
                mixup_fn=self.mixup_fn, scaler=self.scaler, amp_dtype=self.amp_dtype, ema=self.ema,
                clip_grad=self.cfg.clip_grad, on_step=lambda r: self.on_step(r, bar))
        finally:
            if bar is not None:
                bar.close()

    def end_epoch(self, epoch: int, result: dict[str, Any]) -> None:
        """Evaluate at all patches (and the EMA), log, write checkpoint.pt and best.pt."""
        st = self.state
        val = evaluate(self.model, self.val_loader, self.device, amp_dtype=self.amp_dtype)
        record = {"epoch": epoch, "acc1": val["acc1"], "acc5": val["acc5"], "loss": val["loss"],
                  "epoch_time": st.epoch_time_s}
        if self.ema is not None:
            ema_val = evaluate(self.ema.module, self.val_loader, self.device, amp_dtype=self.amp_dtype)
            record.update(ema_acc1=ema_val["acc1"], ema_acc5=ema_val["acc5"], ema_loss=ema_val["loss"])
        st.last_val = record
        is_best = val["acc1"] > st.best_acc1
        if is_best:
            st.best_acc1, st.best_epoch = val["acc1"], epoch
        if self.val_log is not None:
            self.val_log.write(record)
        path = self.save()
        if is_best and path is not None:
            atomic_copy(path, self.out / "best.pt")
        if self.d.main:
            ema = f"  ema acc1 {record['ema_acc1']:.2f}" if self.ema is not None else ""
            print(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {result['loss']:.4f}  acc1 {val['acc1']:.2f}  "
                  f"acc5 {val['acc5']:.2f}{ema}  ({st.epoch_time_s:.1f} s)", flush=True)

    def run(self) -> Optional[dict[str, Any]]:
        """Train to the end (or --max-steps); returns the summary, or None when stopped early."""
        start_epoch = self.state.step // self.steps_per_epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            try:
                result = self.run_epoch(epoch)
            except NonFiniteLossError as err:
                last = self.out / "checkpoint.pt"
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
                raise NonFiniteLossError(err.step, err.loss, f"(epoch {epoch + 1}): training stopped, {kept}; "
                                         f"try a lower --lr or --clip-grad 1") from None
            if not result["stopped"]:
                self.end_epoch(epoch, result)
            if self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps:
                if self.d.main:
                    print(f"stopped at step {self.state.step} (--max-steps); continue with: "
                          f"vitpss train --resume {self.out}", flush=True)
                return None
        return self.finish()

    def finish(self) -> Optional[dict[str, Any]]:
        """Write summary.json and print the result (rank 0)."""
        if not self.d.main:
            return None
        st = self.state
        self.update_clocks()
        with torch.random.fork_rng(devices=[]):
            fraction = FlopModel(self.model).compute_fraction(self.schedule.rates())
        last = st.last_val or {}
        summary = {
            "acc1": last.get("acc1"), "acc5": last.get("acc5"), "best_acc1": st.best_acc1,
            "best_epoch": st.best_epoch, "train_time_s": st.train_time_s, "wall_time_s": st.wall_time_s,
            "cpu_time_s": st.cpu_time_s,
            "images_per_s": st.images / max(st.train_time_s, 1e-9), "schedule": self.cfg.schedule,
            "sampler": self.cfg.sampler, "epochs": self.cfg.epochs, "steps": self.schedule.total_steps,
            "compute_fraction": fraction, "mean_keep_rate": self.schedule.mean_keep_rate(),
            "model": self.cfg.model, "data": self.cfg.data, "world_size": self.d.world_size,
            "device": str(self.device),
        }
        if "ema_acc1" in last:
            summary["ema_acc1"] = last["ema_acc1"]
        summary.update(time_vs_all_patches(read_jsonl(self.out / "train_log.jsonl")))
        atomic_write_json(self.out / "summary.json", summary)
        print(f"acc1 {summary['acc1']:.2f}  best acc1 {st.best_acc1:.2f} (epoch {st.best_epoch + 1})  "
              f"training time {st.train_time_s:.1f} s  compute fraction {fraction:.3f}", flush=True)
        if "time_vs_all_patches" in summary:
            print(f"time vs all patches: {summary['time_vs_all_patches']:.2f}x (measured in this run: median step "
                  f"{1000 * summary['full_step_time_s']:.1f} ms at keep rate 1 over {summary['full_steps']} steps, "
                  f"weighted against each keep rate's median step)", flush=True)
        print(f"run directory: {self.out}", flush=True)
        return summary


def train(cfg: TrainConfig, checkpoint: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Run a whole training job (the Python form of ``vitpss train``); returns the summary dict.

    ``cfg`` must be validated (:func:`vitpss.config.validate`). To resume, pass the loaded
    ``checkpoint`` (see :func:`resume_config`). Returns None on non-zero ranks and when stopped by
    ``max_steps``. Raises UsageError for bad input and NonFiniteLossError for a NaN/inf loss.
    """
    if cfg.resume and checkpoint is None:
        cfg, checkpoint, _ = resume_config(cfg.resume, {})
    owns_group = not (dist.is_available() and dist.is_initialized())
    with num_threads(cfg.threads):
        trainer = None
        try:
            trainer = Trainer(cfg, checkpoint)
            trainer.open_logs(resuming=checkpoint is not None)
            if trainer.state.step >= trainer.schedule.total_steps:
                if not (trainer.out / "summary.json").exists():  # killed after its last checkpoint
                    return trainer.finish()
                if trainer.d.main:
                    print(f"nothing to do: the run in {trainer.out} finished at step {trainer.state.step}")
                return None
            return trainer.run()
        finally:
            if trainer is not None:
                trainer.close_logs()
            if owns_group and dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
