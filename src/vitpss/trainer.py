"""The training driver of ``vitpss train`` and ``vitpss pretrain``: :class:`Trainer` and :func:`train`.

The job, top to bottom (:func:`train`): resolve the config, set up data-parallel processes (under
``torchrun``), build data and the task's model (:mod:`vitpss.tasks`: classification, or SimMIM),
AdamW, a cosine LR per optimiser step with warm-up, EMA and AMP; restore a checkpoint when
resuming; then per epoch :meth:`Trainer.train_epoch` (one step, read top to bottom: keep rate =
``schedule(global step)``, forward/backward over ``accum_steps`` micro-batches, optimiser, LR, EMA),
validation, logs and checkpoints; finally ``summary.json``. Losses stay on the device: every
``log_every`` steps (and before every checkpoint) one transfer writes the pending records and
checks them for NaN/inf. Process set-up lives in :mod:`vitpss.runtime`, the command lines in ``commands/``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
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
    RESUME_OVERRIDABLE, TrainConfig, config_to_dict, dump_yaml, from_dict, read_yaml, schedule_from_config, validate,
)
from .budget import interpolated, measure_loader, rates_to_measure, solve_epochs
from .data import build_datasets, build_loader
from .engine import NonFiniteLossError, StepTimer, all_reduce_sum
from .errors import UsageError
from .models import model_report, resolve_model_config
from .optim import create_adamw
from .patching import num_patches, patch_samplers, token_count
from .resolution import model_patch_size, patches_at_rate, resize_to_rate, supports_resize
from .timing import time_training_steps, time_vs_all_patches
from .runtime import (
    Dist, amp_settings, compile_for_schedule, enable_tf32, num_threads, prepare_output, resolve_amp, seed_everything,
    setup_distributed,
)
from .tasks import ClassificationTask, Task
from .weights import load_pretrained

__all__ = ["RunState", "Trainer", "resume_config", "train"]

#: Share of training time spent waiting for data above which a run warns (once).
DATA_WAIT_MIN_SECONDS = 30.0  # training time before the data-wait share is judged
DATA_WAIT_WARNING = 0.10
#: --amp fp16: the GradScaler skips steps with inf/NaN gradients, so a diverged run would go on with
#: frozen weights. It stops after this many log points in a row with only NaN/inf losses, or when the
#: loss scale falls below MIN_LOSS_SCALE (fairseq's --min-loss-scale default): every step overflowed.
NONFINITE_LOG_POINTS = 3
MIN_LOSS_SCALE = 1e-4


def resume_config(resume: str, overrides: dict[str, Any], *, checkpoint_format: str = CHECKPOINT_FORMAT,
                  task_keys: Sequence[str] = ()) -> tuple[TrainConfig, Optional[dict[str, Any]], Path]:
    """The config of the run to resume (from its checkpoint) with run-control ``overrides`` applied.

    Only :data:`~vitpss.config.RESUME_OVERRIDABLE` fields may differ; ``max_steps`` is not
    inherited. The output directory defaults to the checkpoint's directory. A run directory
    resumes from its newest valid checkpoint; damaged ones are named on stderr (rank 0). A run
    directory without any checkpoint yet (killed during its first step) restarts from step 0 with
    its ``config.yaml``; the checkpoint returned is then None. ``task_keys``: keys of a task's own
    section of ``config.yaml`` (e.g. SimMIM's mask), skipped here.
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
        values = {k: v for k, v in read_yaml(path).items() if k not in task_keys}
        saved = config_to_dict(from_dict(values, source=str(path)))
        if main_rank:
            print(f"no checkpoint in {directory} yet: restarting the run from step 0 with {path}", flush=True)
    else:
        path, ckpt = find_resume_checkpoint(resume, warn, checkpoint_format=checkpoint_format)
        if "run_state" not in ckpt:
            raise UsageError(f"{path} was written by a vitpss version whose pre-training could not resume: "
                             f"start the run again")
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


def _plain_progress_enabled(cfg: TrainConfig, d: Dist) -> bool:
    """Progress as plain lines (at each log point) where stderr is no terminal: a log file gets no bar."""
    return d.main and not cfg.quiet and not sys.stderr.isatty()


# --------------------------------------------------------------------------- the job


@dataclasses.dataclass
class RunState:
    """Counters carried across epochs and checkpoints."""

    step: int = 0  # optimiser steps done
    best_acc1: float = -1.0
    best_epoch: int = -1
    train_time_s: float = 0.0  # steps and data waits only
    wall_time_s: float = 0.0  # the whole loop: steps, logging, evaluations, checkpoints (to the last save)
    cpu_time_s: float = 0.0  # this process's CPU time over the same span (robust to other load on the machine)
    epoch_time_s: float = 0.0  # training time of the current, unfinished epoch
    images: int = 0
    last_val: Optional[dict[str, float]] = None
    budget: Optional[dict[str, Any]] = None  # --budget: the choice of budget.solve_epochs (BudgetChoice.to_dict)
    train_cpu_time_s: float = 0.0  # CPU time of the steps and their data waits
    data_time_s: float = 0.0  # time waiting for data (part of train_time_s)


@dataclasses.dataclass
class PendingStep:
    """A step done but not yet logged: its loss is still a device tensor, its time a pair of marks."""

    step: int
    epoch: int
    keep_rate: float
    tokens: int
    loss: torch.Tensor
    lr: float
    span: tuple[Any, Any]  # StepTimer marks around the compute
    data_time: float  # waiting for the step's batches
    late_data_time: float  # the part of data_time inside span (micro-batches after the first)
    cpu_time: float
    images: int


def upgrade_epoch_numbers(out: Path, steps_per_epoch: int) -> None:
    """Rewrite the logs of a run begun when epochs were counted from 0 (val records without ``step``;
    train records at ``epoch == step // steps_per_epoch``) to count from 1, so that a resumed run's
    logs hold one convention. Logs that already count from 1 come out unchanged."""
    val = read_jsonl(out / "val_log.jsonl") if (out / "val_log.jsonl").exists() else []
    if any("step" not in r for r in val):
        atomic_write_text(out / "val_log.jsonl", "".join(json.dumps(
            r if "step" in r else {**r, "epoch": r["epoch"] + 1, "step": (r["epoch"] + 1) * steps_per_epoch})
            + "\n" for r in val))
    if (out / "train_log.jsonl").exists():
        atomic_write_text(out / "train_log.jsonl", "".join(
            json.dumps({**r, "epoch": r["step"] // steps_per_epoch + 1}) + "\n"
            for r in read_jsonl(out / "train_log.jsonl")))


class Trainer:
    """Holds the objects of one run; :meth:`run` is the epoch loop, :meth:`train_epoch` the steps. Built by :func:`train`."""

    def __init__(self, cfg: TrainConfig, checkpoint: Optional[dict[str, Any]] = None,
                 task: Optional[Task] = None) -> None:
        self.task = task = task if task is not None else ClassificationTask(cfg)
        self.d, self.device = setup_distributed(cfg.device)
        enable_tf32(self.device)
        cfg = resolve_model_config(cfg)
        if self.d.main:  # the run's first line: which model sees which images
            print("\n".join(model_report(cfg)), flush=True)
        train_ds, val_ds, num_classes, _, _ = build_datasets(cfg)
        self.cfg = cfg = dataclasses.replace(task.resolve(cfg, num_classes), amp=resolve_amp(cfg.amp, self.device))
        self.amp_dtype, self.scaler = amp_settings(cfg.amp, self.device)
        seed_everything(cfg.seed)
        # every sampler (and SimMIM's masks) draws from the run's own generator, saved in checkpoints
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + self.d.rank)
        self.model = task.build_model(cfg, self.generator).to(self.device)
        if cfg.pretrained and checkpoint is None:  # a resumed run restores its own weights
            report = load_pretrained(self.model, cfg.pretrained)
            if self.d.main:
                print(f"pretrained weights from {cfg.pretrained}: {report.summary()}", flush=True)
        seed_everything(cfg.seed + self.d.rank)  # per-rank randomness (drop path, Mixup)
        self.train_loader = build_loader(train_ds, cfg, True, rank=self.d.rank, world_size=self.d.world_size,
                                         device=self.device)
        self.val_loader = build_loader(val_ds, cfg, False, rank=self.d.rank, world_size=self.d.world_size,
                                       device=self.device)
        self.steps_per_epoch = len(self.train_loader) // cfg.accum_steps  # optimiser steps
        if self.steps_per_epoch == 0:
            raise UsageError(f"--accum-steps={cfg.accum_steps} exceeds the {len(self.train_loader)} batches of an "
                             f"epoch: lower --accum-steps or --batch-size")
        self.schedule = schedule_from_config(cfg, self.steps_per_epoch)
        self.state = RunState()
        if (cfg.budget is not None or cfg.tokens == "resize") and not isinstance(task, ClassificationTask):
            raise UsageError("--budget and --tokens resize are for vitpss train (classification), not pre-training")
        if cfg.tokens == "resize" and not supports_resize(self.model):
            raise UsageError(f"--tokens resize needs a model that reads smaller images; {cfg.model} does not: "
                             f"use --tokens sample")
        if cfg.budget is not None and cfg.budget_epochs is None and checkpoint is None:
            self.state.budget = self.fit_budget(train_ds)
            self.cfg = cfg = dataclasses.replace(cfg, epochs=self.state.budget["epochs"], budget_epochs=cfg.epochs,
                                                 cooldown_epochs=self.state.budget["cooldown_epochs"])
            self.schedule = schedule_from_config(cfg, self.steps_per_epoch)
        self.resize = cfg.tokens == "resize"
        self.patch_size = model_patch_size(self.model) if self.resize else None
        self.optimizer = create_adamw(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        self.lr_scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.schedule.total_steps, lr_min=cfg.min_lr,
            warmup_t=round(cfg.warmup_epochs * self.steps_per_epoch), warmup_lr_init=min(1e-6, cfg.lr), t_in_epochs=False)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        if checkpoint is not None:
            self.restore(checkpoint)
        # Clock origins shifted by the time already spent, so a resumed run keeps adding to it.
        self.wall_origin = time.perf_counter() - self.state.wall_time_s
        self.cpu_origin = time.process_time() - self.state.cpu_time_s
        self.out = prepare_output(cfg, self.d, resuming=checkpoint is not None)
        self.net: nn.Module = self.model
        self.ddp: Optional[nn.parallel.DistributedDataParallel] = None
        if self.d.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = compile_for_schedule(self.net, self.schedule, warn=self.d.main)
        self.timer = StepTimer(self.device)
        self.samplers = patch_samplers(self.model)
        self.pending: list[PendingStep] = []
        self.epoch_losses: list[float] = []
        self.tokens: dict[float, int] = {}
        self.warned_data_wait = False
        self.bar: Optional[tqdm] = None
        self.nonfinite_points = 0  # fp16: log points in a row whose losses were all NaN/inf
        self.nonfinite_since: Optional[tuple[int, float]] = None  # (step, loss) that began them

    # ---- one epoch of steps

    def train_epoch(self, epoch: int) -> bool:
        """Train from the current step to the end of ``epoch``; True when stopped early by --max-steps."""
        cfg, st, accum = self.cfg, self.state, self.cfg.accum_steps
        skip = st.step - epoch * self.steps_per_epoch
        self.train_loader.sampler.set_epoch(epoch, skip * accum * cfg.batch_size)
        if skip == 0:
            st.epoch_time_s = 0.0
        self.epoch_losses = []
        self.net.train()
        batches = iter(self.train_loader)  # a DevicePrefetcher (build_loader): batches arrive on self.device
        last_cpu = time.process_time()
        for step in range(st.step, (epoch + 1) * self.steps_per_epoch):
            rate = self.schedule(step)  # constant over the optimiser step's micro-batches
            for sampler in self.samplers:  # vitpss.set_keep_rate, without walking the model every step
                sampler.train_keep_rate = 1.0 if self.resize else rate
            lr = max(group["lr"] for group in self.optimizer.param_groups)  # the unscaled LR under --layer-decay
            loss_sum, images, data_time, late_data_time, start = None, 0, 0.0, 0.0, None
            for micro in range(accum):
                wait = time.perf_counter()
                x, y = next(batches)
                waited = time.perf_counter() - wait
                data_time += waited
                if start is None:
                    start = self.timer.mark()
                else:
                    late_data_time += waited
                if self.resize:  # --tokens resize: the keep rate as a smaller image (part of the step's time)
                    x = resize_to_rate(x, rate, self.patch_size)
                with self.gradient_sync(micro == accum - 1):
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        loss = self.task.loss(self.net, x, y)
                    self.backward(loss / accum if accum > 1 else loss)
                loss = loss.detach()
                loss_sum = loss if loss_sum is None else loss_sum + loss
                images += x.shape[0]
            self.optimizer_step()
            self.lr_scheduler.step_update(step + 1)
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            end = self.timer.mark()
            cpu = time.process_time()
            self.pending.append(PendingStep(
                step=step, epoch=epoch, keep_rate=rate, tokens=self.token_count(rate),
                loss=loss_sum / accum if accum > 1 else loss_sum, lr=lr, span=(start, end), data_time=data_time,
                late_data_time=late_data_time, cpu_time=cpu - last_cpu, images=images * self.d.world_size))
            st.step = step + 1
            if self.bar is not None:
                self.bar.update()
            stop = cfg.max_steps is not None and st.step >= cfg.max_steps
            epoch_end = st.step % self.steps_per_epoch == 0
            if stop or epoch_end or st.step % cfg.log_every == 0:
                self.write_log()
            # At an epoch end, end_epoch() evaluates first, then saves: a checkpoint written here, before the
            # evaluation, would let a crash in between skip that epoch's evaluation on resume.
            if not epoch_end and (stop or (cfg.save_every_steps and st.step % cfg.save_every_steps == 0)):
                self.save()
            if stop and not epoch_end:
                return True
            last_cpu = time.process_time()  # logging and saving are not steps
        return False

    def gradient_sync(self, final_micro_step: bool):
        """DDP's ``no_sync`` on micro-steps before the last of an optimiser step (gradients all-reduce once)."""
        if self.ddp is None or final_micro_step:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def optimizer_step(self) -> None:
        """Clip, step (fp16: the scaler skips a step with inf/NaN gradients, as in timm), zero the gradients."""
        clip = self.cfg.clip_grad
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def token_count(self, rate: float) -> int:
        if rate not in self.tokens:
            if self.resize:
                prefix = token_count(self.model, 1.0) - num_patches(self.model)
                self.tokens[rate] = prefix + patches_at_rate(rate, self.model.patch_embed.grid_size)
            else:
                self.tokens[rate] = token_count(self.model, rate)
        return self.tokens[rate]

    def fit_budget(self, train_ds: torch.utils.data.Dataset) -> dict[str, Any]:
        """``--budget``: measure the step cost at each keep rate (model + data loader), choose the epochs.

        Rank 0 measures and chooses, every rank gets its choice. The model's weights and every
        random state are restored afterwards, so the run is the one ``--epochs <chosen>`` would give.
        """
        cfg = self.cfg
        choice: list[Optional[dict[str, Any]]] = [None]
        if self.d.main:
            weights, generator = copy.deepcopy(self.model.state_dict()), self.generator.get_state()
            cuda = [self.device] if self.device.type == "cuda" else []
            try:  # fork_rng: the global CPU (and this GPU's) random state comes back as it was
                with torch.random.fork_rng(devices=cuda):
                    times = time_training_steps(self.model, rates_to_measure(self.schedule), batch_size=cfg.batch_size,
                                                repeats=5, warmup=1, amp_dtype=self.amp_dtype, tokens=cfg.tokens)
                    loader = measure_loader(train_ds, cfg, self.device, batches=5)
            finally:
                self.model.load_state_dict(weights)
                self.generator.set_state(generator)
                self.model.zero_grad(set_to_none=True)
            model_time = interpolated(times)
            try:
                solved = solve_epochs(self.schedule, lambda r: loader.step_time(model_time(r)), cfg.budget)
            except ValueError as err:
                raise UsageError(f"--budget: {err}") from None
            choice[0] = solved.to_dict()
            ratio = solved.predicted_fraction
            print(f"budget {cfg.budget:g} x the training time of {cfg.epochs} epochs at all patches: "
                  f"{solved.epochs} epochs of {cfg.schedule} (tokens {cfg.tokens}"
                  + (f", cooldown {solved.cooldown_epochs}" if solved.cooldown_epochs else "")
                  + f"), predicted {ratio:.2f} x; step ms at keep rate "
                  + ", ".join(f"{r:g}: {1e3 * t:.1f}" for r, t in solved.step_time_s.items()), flush=True)
        if self.d.world_size > 1:
            dist.broadcast_object_list(choice, src=0)
        return choice[0]

    def budget_summary(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The ``--budget`` choice, and the measured training time over that of E all-patch epochs.

        The all-patch step is this run's median step (with its data wait) at keep rate 1 when at least
        5 steps ran at it, else the calibration's (``measured_from`` says which). ``measured_cpu_fraction``
        is the same ratio in process CPU time (robust to other load on a shared machine; run only).
        """
        choice = self.state.budget or {}
        reference_steps = (self.cfg.budget_epochs or self.cfg.epochs) * self.steps_per_epoch
        full = [r for r in records if r["keep_rate"] == 1.0]
        cpu = None
        if len(full) >= 5:
            full_step, source = statistics.median(r["step_time"] + r["data_time"] for r in full), "run"
            if all("cpu_time" in r for r in records):
                cpu = sum(r["cpu_time"] for r in records) / (
                    reference_steps * statistics.median(r["cpu_time"] for r in full))
        elif "step_time_s" in choice:
            full_step, source = choice["step_time_s"]["1"], "calibration"
        else:
            return {**choice, "measured_fraction": None, "measured_from": None, "measured_cpu_fraction": None}
        measured = sum(r["step_time"] + r["data_time"] for r in records) / (reference_steps * full_step)
        return {**choice, "measured_fraction": measured, "measured_from": source, "measured_cpu_fraction": cpu}

    # ---- logs

    def write_log(self) -> None:
        """A log point: one transfer for the pending steps, their records, the NaN/inf check.

        Raises NonFiniteLossError naming the first step with a NaN/inf loss (the records before it
        are written); under fp16, where the scaler skips such steps, see :meth:`check_fp16`.
        """
        pending, self.pending = self.pending, []
        if not pending:
            return
        losses = all_reduce_sum(torch.stack([p.loss for p in pending]).float())
        values = [loss / self.d.world_size for loss in losses.tolist()]
        step_times = self.timer.seconds([p.span for p in pending])
        records, st = [], self.state
        for p, loss, step_time in zip(pending, values, step_times):
            if not math.isfinite(loss) and self.scaler is None:
                self.write_records(records)
                raise NonFiniteLossError(p.step, loss)
            step_time = max(step_time - p.late_data_time, 0.0)
            records.append({"step": p.step, "epoch": p.epoch + 1, "keep_rate": p.keep_rate, "tokens": p.tokens,
                            "loss": loss, "lr": p.lr, "step_time": step_time, "data_time": p.data_time,
                            "images": p.images, "cpu_time": p.cpu_time})
            st.train_time_s += step_time + p.data_time
            st.epoch_time_s += step_time + p.data_time
            st.data_time_s += p.data_time
            st.train_cpu_time_s += p.cpu_time
            st.images += p.images
            self.epoch_losses.append(loss)
        self.write_records(records)
        if self.scaler is not None:
            self.check_fp16(pending, values)

    def check_fp16(self, pending: list[PendingStep], losses: list[float]) -> None:
        """Stop an fp16 run whose steps the scaler keeps skipping (one scalar read per log point).

        Raises NonFiniteLossError after NONFINITE_LOG_POINTS log points in a row with only NaN/inf
        losses, or when the loss scale falls below MIN_LOSS_SCALE. The decision is the same on every
        rank: losses are summed over ranks and the scale follows gradients that DDP all-reduced.
        """
        if any(math.isfinite(loss) for loss in losses):
            self.nonfinite_points, self.nonfinite_since = 0, None
        else:
            self.nonfinite_points += 1
            self.nonfinite_since = self.nonfinite_since or (pending[0].step, losses[0])
        if self.nonfinite_points >= NONFINITE_LOG_POINTS:
            step, loss = self.nonfinite_since
            raise NonFiniteLossError(step, loss, f"and at every step up to {pending[-1].step} under --amp fp16 (the "
                                     f"scaler skipped them: the weights stopped changing)")
        scale = self.scaler.get_scale()
        if scale < MIN_LOSS_SCALE:
            raise NonFiniteLossError(pending[-1].step, losses[-1], f"and the --amp fp16 loss scale fell to {scale:.1e} "
                                     f"(below {MIN_LOSS_SCALE:g}): the gradients overflow at every step")

    def write_records(self, records: list[dict[str, Any]]) -> None:
        if self.train_log is not None and records:
            self.train_log.write_many(records)
        if records and (self.bar is not None or _plain_progress_enabled(self.cfg, self.d)):
            last = records[-1]
            ips = last["images"] / max(last["step_time"] + last["data_time"], 1e-9)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{last['loss']:.3f}", keep=f"{last['keep_rate']:.2f}", img_s=f"{ips:.0f}",
                                     refresh=False)
            else:
                within = last["step"] + 1 - (last["epoch"] - 1) * self.steps_per_epoch
                print(f"epoch {last['epoch']}/{self.cfg.epochs}  step {within}/{self.steps_per_epoch}  "
                      f"loss {last['loss']:.3f}  keep {last['keep_rate']:.2f}  {ips:.0f} img/s", file=sys.stderr,
                      flush=True)

    def open_logs(self, resuming: bool) -> None:
        self.train_log = self.val_log = None
        if not self.d.main:
            return
        atomic_write_text(self.out / "config.yaml", dump_yaml(self.cfg) + self.task.config_text())
        if resuming:  # drop records past the checkpoint (written after it, before the interruption)
            step, epoch = self.state.step, self.state.step // self.steps_per_epoch
            truncate_jsonl(self.out / "train_log.jsonl", lambda r: r.get("step", -1) < step)
            truncate_jsonl(self.out / "val_log.jsonl", lambda r: r["step"] <= step if "step" in r
                           else r.get("epoch", -1) < epoch)  # records before epochs counted from 1 had no step
            upgrade_epoch_numbers(self.out, self.steps_per_epoch)
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

    def warn_if_data_bound(self) -> None:
        """Warn once (stderr, rank 0) when waiting for data takes over DATA_WAIT_WARNING of the training time."""
        share = self.state.data_time_s / max(self.state.train_time_s, 1e-9)
        # a few seconds of training (a smoke test) say nothing about the loader: no warning then
        if (self.warned_data_wait or share <= DATA_WAIT_WARNING or not self.d.main
                or self.state.train_time_s < DATA_WAIT_MIN_SECONDS):
            return
        self.warned_data_wait = True
        print(f"vitpss: warning: {share:.0%} of the training time waited for data: the loader cannot keep up; "
              f"raise --workers, keep the data in memory (--in-memory on) or lighten --augment", file=sys.stderr,
              flush=True)

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
        """Write the full state (every rank takes part: RNG states are gathered to rank 0).

        The pending steps are logged first, so no checkpoint holds weights updated by a NaN/inf loss;
        under fp16 nothing is written while the last log point's losses were all NaN/inf (the
        last good checkpoint stays). Returns the path written (rank 0), else None.
        """
        self.write_log()
        if self.nonfinite_points:  # the same on every rank (losses are summed over ranks)
            return None
        self.update_clocks()
        states = [rng_state(self.generator)]
        if self.d.world_size > 1:
            states = [None] * self.d.world_size
            dist.all_gather_object(states, rng_state(self.generator))
        if not self.d.main:
            return None
        ckpt = {
            "format": self.task.checkpoint_format, "vitpss_version": __version__, "config": config_to_dict(self.cfg),
            "step": self.state.step, "epoch": self.state.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.d.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "run_state": dataclasses.asdict(self.state), "rng": states, **self.task.checkpoint_fields(),
        }
        path = self.out / name
        atomic_save(ckpt, path)
        return path

    def update_clocks(self) -> None:
        self.state.wall_time_s = time.perf_counter() - self.wall_origin
        self.state.cpu_time_s = time.process_time() - self.cpu_origin

    # ---- epochs

    def end_epoch(self, epoch: int) -> None:
        """Validate (the task's way), log, write checkpoint.pt and (if the task scores) best.pt."""
        st = self.state
        record = {"epoch": epoch + 1, "step": st.step, **self.task.validate(self.model, self.ema.module if self.ema is not None else None,
                                                       self.val_loader, self.device, self.amp_dtype),
                  "epoch_time": st.epoch_time_s}
        st.last_val = record
        score = self.task.score(record)
        is_best = score is not None and score > st.best_acc1
        if is_best:
            st.best_acc1, st.best_epoch = score, epoch
        if self.val_log is not None:
            self.val_log.write(record)
        path = self.save()
        if is_best and path is not None:
            atomic_copy(path, self.out / "best.pt")
        if self.d.main:
            loss = sum(self.epoch_losses) / max(len(self.epoch_losses), 1)
            print(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {loss:.4f}  {self.task.epoch_line(record)}  "
                  f"({st.epoch_time_s:.1f} s)", flush=True)
        self.warn_if_data_bound()

    def run(self) -> Optional[dict[str, Any]]:
        """Train to the end (or --max-steps); returns the summary, or None when stopped early."""
        start_epoch = self.state.step // self.steps_per_epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            if _progress_enabled(self.cfg, self.d):
                self.bar = tqdm(total=self.steps_per_epoch, initial=self.state.step - epoch * self.steps_per_epoch,
                                desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
            try:
                stopped = self.train_epoch(epoch)
            except NonFiniteLossError as err:
                last = self.out / "checkpoint.pt"
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
                raise NonFiniteLossError(err.step, err.loss, f"{err.detail} (epoch {epoch + 1}): training stopped, "
                                         f"{kept}; try a lower --lr or --clip-grad 1".lstrip()) from None
            finally:
                if self.bar is not None:
                    self.bar.close()
                    self.bar = None
            if not stopped:
                self.end_epoch(epoch)
            if self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps:
                if self.d.main:
                    print(f"stopped at step {self.state.step} (--max-steps); continue with: "
                          f"vitpss {self.task.command} --resume {self.out}", flush=True)
                return None
        return self.finish()

    def finish(self) -> Optional[dict[str, Any]]:
        """Write summary.json and print the result (rank 0)."""
        if not self.d.main:
            return None
        st = self.state
        self.update_clocks()
        summary = {
            **self.task.summary(st.last_val or {}), "train_time_s": st.train_time_s, "wall_time_s": st.wall_time_s,
            "cpu_time_s": st.cpu_time_s, "train_cpu_time_s": st.train_cpu_time_s,
            "data_wait_share": st.data_time_s / max(st.train_time_s, 1e-9),
            "images_per_s": st.images / max(st.train_time_s, 1e-9), "epochs": self.cfg.epochs,
            "steps": self.schedule.total_steps, "model": self.cfg.model, "data": self.cfg.data,
            "world_size": self.d.world_size, "device": str(self.device), "amp": self.cfg.amp,
            "accum_steps": self.cfg.accum_steps,
        }
        summary.update(self.task.summary_extras(st, self.model, self.schedule))
        records = read_jsonl(self.out / "train_log.jsonl")
        summary.update(time_vs_all_patches(records))
        if self.cfg.budget is not None:
            summary["budget"] = self.budget_summary(records)
        atomic_write_json(self.out / "summary.json", summary)
        if "time_vs_all_patches" in summary:
            print(f"time vs all patches: {summary['time_vs_all_patches']:.2f}x (measured in this run: median step "
                  f"{1000 * summary['full_step_time_s']:.1f} ms at keep rate 1 over {summary['full_steps']} steps, "
                  f"weighted against each keep rate's median step)", flush=True)
        print(self.task.report(summary, self.out), flush=True)
        return summary


def train(cfg: TrainConfig, checkpoint: Optional[dict[str, Any]] = None,
          task: Optional[Task] = None) -> Optional[dict[str, Any]]:
    """Run a whole job (the Python form of ``vitpss train``; ``task`` = SimMIMTask for ``vitpss pretrain``).

    ``cfg`` must be validated (:func:`vitpss.config.validate`). To resume, pass the loaded
    ``checkpoint`` (see :func:`resume_config`). Returns the summary dict; None on non-zero ranks
    and when stopped by ``max_steps``. Raises UsageError for bad input and NonFiniteLossError for a
    NaN/inf loss.
    """
    task = task if task is not None else ClassificationTask(cfg)
    if cfg.resume and checkpoint is None:
        cfg, checkpoint, _ = resume_config(cfg.resume, {}, checkpoint_format=task.checkpoint_format)
    owns_group = not (dist.is_available() and dist.is_initialized())
    with num_threads(cfg.threads):
        trainer = None
        try:
            trainer = Trainer(cfg, checkpoint, task)
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
