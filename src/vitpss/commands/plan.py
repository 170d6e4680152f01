"""``vitpss plan``: what a keep-rate schedule will cost on a model, before training.

For each keep rate of the grid: tokens, FLOPs per image of a training step (forward + backward,
:class:`~vitpss.flops.FlopModel`) and the step time measured in a short calibration on the chosen
device (:func:`~vitpss.timing.time_training_steps`, rates interleaved, medians). For the schedule:
the mean keep rate, the compute fraction (FLOPs of its steps over the same steps with all patches)
and the predicted time fraction (the same ratio of measured step times). ``--budget F`` explains
what ``vitpss train --budget F`` will choose: the epochs whose predicted time is F times that of
``--epochs`` at all patches (:func:`vitpss.budget.solve_epochs`, from the measured step times, or
from FLOPs with ``--no-measure``). ``--compute-budget F`` instead solves for the schedule's free
parameter (``low``; the rate of ``fixed``) so that the compute fraction is the largest one on the
grid that does not exceed ``F``.

With ``--data`` (or a config that names its data) the training data pipeline is timed too: the
loader ``vitpss train`` would build (same dataset, transforms, workers, batch size;
:func:`~vitpss.data.build_loader`), in images/s. Each rate's step is then predicted as the model's
step bounded by the loader: with ``workers = 0`` the main process loads between steps, so the two
add up; with workers, loading overlaps the step and the slower of the two sets the pace. Rates at
which more than 10% of a step would be spent waiting for data are named, with what to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any, Optional, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..budget import LoaderSpeed, grid_rates, measure_loader, scaled_schedule, solve_epochs
from ..config import TrainConfig, from_dict, load_config, schedule_from_config, validate
from ..data import build_datasets, build_loader, data_kind
from ..errors import UsageError
from ..flops import FlopModel
from ..models import build_model, resolve_model_config
from .. import patching
from .common import add_field_arguments
from ..resolution import equivalent_keep_rates
from ..runtime import amp_settings, resolve_device
from ..samplers import keep_count
from ..schedules import KeepRateSchedule
from ..timing import time_training_steps

#: Up to this many grid rates the table lists each; finer grids (and quantum 0) show DISPLAY_RATES.
MAX_ROWS = 12
DISPLAY_RATES = (0.2, 0.4, 0.6, 0.8, 1.0)
#: Up to this many distinct keep counts are each measured; beyond, step time is fitted (quadratic).
MAX_MEASURED = 12
#: TrainConfig fields that ``vitpss plan`` takes, as in ``vitpss train``.
PLAN_FIELDS = ("model", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans", "global_pool",
               "num_classes", "sampler", "batch_size", "device", "amp", "schedule", "low", "high", "quantum",
               "cooldown_epochs", "period_steps", "epochs", "threads", "data", "synthetic_size", "augment", "hflip",
               "workers", "on_bad_image", "seed", "data_root", "in_memory", "train_subset", "train_split",
               "val_split", "image_column", "label_column", "decode", "tokens")
SCHEDULE_FIELDS = ("schedule", "low", "high", "quantum", "cooldown_epochs", "period_steps")
#: A rate is data-bound when more than this share of its step would be spent waiting for data.
DATA_WAIT_LIMIT = 0.10


# --------------------------------------------------------------------------- grid and shares


def table_rates(quantum: float) -> list[float]:
    """Rows of the plan table: the grid when it has at most MAX_ROWS rates, else DISPLAY_RATES."""
    grid = grid_rates(quantum)
    return grid if 0 < len(grid) <= MAX_ROWS else list(DISPLAY_RATES)


def nearest_shares(rates: np.ndarray, rows: Sequence[float]) -> list[float]:
    """Share of ``rates`` nearest to each row (exactly the share at each rate when rows are the grid)."""
    values, counts = np.unique(np.asarray(rates, dtype=np.float64), return_counts=True)
    nearest = np.abs(values[:, None] - np.asarray(rows)[None, :]).argmin(axis=1)
    shares = np.bincount(nearest, weights=counts, minlength=len(rows)) / counts.sum()
    return [float(s) for s in shares]


# --------------------------------------------------------------------------- step time


@dataclasses.dataclass(frozen=True)
class StepTimes:
    """Seconds per training step as a function of the keep count (patch tokens kept).

    Measured counts are used as measured; any other count comes from a least-squares quadratic in
    the count through the measured points (a ViT's cost is quadratic in its tokens, as in
    :class:`~vitpss.flops.FlopModel`).
    """

    num_patches: int
    measured: dict[int, float]

    def at_count(self, count: int) -> float:
        if count in self.measured:
            return self.measured[count]
        counts = sorted(self.measured)
        coef = np.polyfit(counts, [self.measured[c] for c in counts], min(2, len(counts) - 1))
        return float(np.polyval(coef, count))

    def at_rate(self, rate: float) -> float:
        return self.at_count(keep_count(rate, self.num_patches))

    def time_fraction(self, rates: np.ndarray, loader: Optional["LoaderSpeed"] = None) -> float:
        """Predicted time of steps at ``rates`` over the same steps with all patches.

        With ``loader`` each step is bounded by the data pipeline (:meth:`LoaderSpeed.step_time`).
        """
        step = (lambda t: t) if loader is None else loader.step_time
        values, counts = np.unique(np.asarray(rates, dtype=np.float64), return_counts=True)
        total = sum(step(self.at_rate(float(v))) * int(c) for v, c in zip(values, counts))
        return float(total / (step(self.at_count(self.num_patches)) * int(counts.sum())))

    def data_wait_share(self, rates: np.ndarray, loader: "LoaderSpeed") -> float:
        """Share of the predicted time of steps at ``rates`` spent waiting for data."""
        values, counts = np.unique(np.asarray(rates, dtype=np.float64), return_counts=True)
        model = [self.at_rate(float(v)) for v in values]
        steps = sum(loader.step_time(t) * int(c) for t, c in zip(model, counts))
        return float(sum((loader.step_time(t) - t) * int(c) for t, c in zip(model, counts)) / steps)


def calibration_counts(num_patches: int, rows: Sequence[float], schedule_rates: np.ndarray) -> list[int]:
    """Keep counts to time: the rows' and the schedule's, or only the rows' when those are too many."""
    row_counts = {keep_count(r, num_patches) for r in rows} | {num_patches}
    needed = row_counts | {keep_count(float(r), num_patches) for r in np.unique(schedule_rates)}
    return sorted(needed if len(needed) <= MAX_MEASURED else row_counts)


def measure_step_times(model: nn.Module, counts: Sequence[int], *, batch_size: int, repeats: int, warmup: int,
                       amp_dtype: Optional[torch.dtype]) -> StepTimes:
    """Median training-step seconds at each keep count (interleaved, :func:`time_training_steps`)."""
    patches = patching.num_patches(model)
    rates = {c: c / patches for c in counts}  # keep_count(c / N, N) == c
    times = time_training_steps(model, list(rates.values()), batch_size=batch_size, repeats=repeats,
                                warmup=warmup, amp_dtype=amp_dtype)
    return StepTimes(patches, {c: times[r] for c, r in rates.items()})


# --------------------------------------------------------------------------- data pipeline


def data_advice(cfg: TrainConfig, speed: LoaderSpeed, needed_images_per_s: float) -> list[str]:
    """What to change so that the loader delivers ``needed_images_per_s``."""
    advice = []
    if speed.workers == 0:
        advice.append("load in worker processes (--workers N; now 0, so the main process loads between steps "
                      "and every step waits for its batch)")
    else:
        advice.append(f"more loader workers (--workers; now {speed.workers}, delivering {speed.images_per_s:.0f} "
                      f"images/s, {needed_images_per_s:.0f} needed)")
    if cfg.augment == "randaug":
        advice.append("lighter augmentation (--augment light; randaug is the most expensive)")
    kind = data_kind(cfg.data)
    if kind not in ("synthetic", "mnist5k", "wds", "hf"):
        advice.append("cheaper decoding: images stored at one size, at the training size, and decoded once into "
                      "memory as uint8 (--in-memory on)")
    if kind in ("folder", "wds", "hf") and cfg.decode == "cpu" and cfg.augment in ("none", "light"):
        advice.append("JPEG decoding, crop and flip on the GPU (--decode gpu)")
    return advice


# --------------------------------------------------------------------------- budget


def budget_candidates(schedule: KeepRateSchedule, num_patches: int) -> np.ndarray:
    """Values the free parameter ``low`` may take: multiples of the quantum (of one token for 0)."""
    step = schedule.quantum if schedule.quantum > 0 else 1.0 / num_patches
    top = 1.0 if schedule.name == "fixed" else min(schedule.high, 1.0)
    return np.round(np.arange(1, math.floor(top / step + 1e-9) + 1) * step, 10)


def solve_budget(schedule: KeepRateSchedule, flop_model: FlopModel, budget: float) -> KeepRateSchedule:
    """``schedule`` with the largest grid ``low`` whose compute fraction does not exceed ``budget``.

    The compute fraction never decreases as ``low`` grows, so a binary search over the grid
    finds it. Raises UsageError when even the lowest grid value exceeds the budget.
    """
    if not 0 < budget <= 1:
        raise UsageError(f"--compute-budget={budget!r} is out of range: it must be in (0, 1]")
    if schedule.name == "none":
        raise UsageError("--compute-budget needs a schedule with a free keep rate: use fixed, linear, cosine or cyclic")
    candidates = budget_candidates(schedule, flop_model.num_patches)
    if len(candidates) == 0:
        raise UsageError(f"--high={schedule.high} is below the grid's lowest rate {schedule.quantum}: "
                         f"raise --high or lower --quantum")

    def fraction(i: int) -> float:
        return flop_model.compute_fraction(dataclasses.replace(schedule, low=float(candidates[i])).rates())

    lowest = fraction(0)
    if lowest > budget:
        raise UsageError(f"--compute-budget={budget:g} is not reachable with this {schedule.name} schedule: the minimum "
                         f"compute fraction is {lowest:.4f} (--low {candidates[0]:g}); raise the budget, lower "
                         f"--high or --quantum, or shorten --cooldown-epochs")
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fraction(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return dataclasses.replace(schedule, low=float(candidates[lo]))


def schedule_settings(schedule: KeepRateSchedule) -> dict[str, Any]:
    """The schedule as ``vitpss train`` settings (config keys)."""
    values = {"schedule": schedule.name, "low": schedule.low, "high": schedule.high, "quantum": schedule.quantum,
              "cooldown_epochs": schedule.cooldown_epochs, "period_steps": schedule.period_steps}
    return {k: v for k, v in values.items() if v is not None}


def as_flags(settings: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                    for k, v in settings.items())


def fit_time_budget(cfg: TrainConfig, schedule: KeepRateSchedule, fraction: float, flop_model: FlopModel,
                    times: Optional[StepTimes], loader: Optional[LoaderSpeed]) -> tuple[KeepRateSchedule, dict[str, Any]]:
    """``schedule`` over the epochs ``vitpss train --budget fraction`` would choose, and the choice as a dict.

    Step cost per rate: the measured step (bounded by the loader when timed), or FLOPs without
    measurements; a ``--tokens resize`` rate is costed as the sampled rate with the same tokens.
    """
    grid = model_grid(flop_model)

    def cost(rate: float) -> float:
        if cfg.tokens == "resize":
            rate = float(equivalent_keep_rates([rate], grid)[0])
        if times is None:
            return flop_model.flops(rate)
        return loader.step_time(times.at_rate(rate)) if loader is not None else times.at_rate(rate)

    try:
        choice = solve_epochs(schedule, cost, fraction)
    except ValueError as err:
        raise UsageError(f"--budget: {err}") from None
    basis = ("measured step times and data loader" if loader is not None else "measured step times") if times \
        else "FLOPs (--no-measure)"
    return (scaled_schedule(schedule, choice.epochs, schedule.epochs),
            {"kind": "time", **choice.to_dict(), "basis": basis})


def model_grid(flop_model: FlopModel) -> tuple[int, int]:
    """The (square) patch grid of the plan's model."""
    side = math.isqrt(flop_model.num_patches)
    return side, flop_model.num_patches // max(side, 1)


# --------------------------------------------------------------------------- the plan


def build_plan_schedule(cfg: TrainConfig, steps_per_epoch: int) -> KeepRateSchedule:
    return schedule_from_config(cfg, steps_per_epoch)


def make_plan(cfg: TrainConfig, *, steps_per_epoch: Optional[int] = None, budget: Optional[float] = None,
              time_budget: Optional[float] = None, measure: bool = True, baseline_hours: Optional[float] = None, repeats: int = 3, warmup: int = 1,
              measure_data: bool = False, data_batches: int = 10) -> dict[str, Any]:
    """The plan of ``cfg``'s schedule over ``epochs x steps_per_epoch`` steps, as a JSON-ready dict.

    ``steps_per_epoch`` None: counted from ``cfg``'s training data as ``vitpss train`` counts it
    (batches of ``batch_size`` per epoch over ``accum_steps``). ``measure_data`` (with ``measure``)
    also times ``cfg``'s training data pipeline (:func:`measure_loader`) and bounds each step by it.
    ``budget`` is the compute budget (solves ``low``), ``time_budget`` the time budget of
    ``vitpss train --budget`` (solves the epochs; ``--tokens resize`` steps are costed as sampled
    steps with the same token count).
    """
    device = resolve_device(cfg.device)
    amp_dtype, _ = amp_settings(cfg.amp, device)
    cfg = resolve_model_config(cfg)  # the model "auto" names, and the image size the data is prepared for
    loader, counted = None, steps_per_epoch is None
    if counted or (measure and measure_data):
        train_ds, _, num_classes, _, _ = build_datasets(cfg)
        cfg = dataclasses.replace(cfg, num_classes=num_classes)
        if counted:
            steps_per_epoch = max(1, len(build_loader(train_ds, cfg, True, device=device)) // cfg.accum_steps)
        if measure and measure_data:
            loader = measure_loader(train_ds, cfg, device, batches=data_batches)
    schedule = build_plan_schedule(cfg, steps_per_epoch)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    flop_model = FlopModel(model)
    budget_info = None
    if budget is not None:
        schedule = solve_budget(schedule, flop_model, budget)
        settings = schedule_settings(schedule)
        budget_info = {"kind": "compute", "target": budget, "low": schedule.low, "flags": as_flags(settings),
                       "yaml": yaml.safe_dump(settings, sort_keys=False)}
    rates = schedule.rates()
    rows = table_rates(schedule.quantum)
    n = flop_model.num_patches
    times = None
    if measure:
        counts = calibration_counts(n, rows, rates)
        times = measure_step_times(model, counts, batch_size=cfg.batch_size, repeats=repeats, warmup=warmup,
                                   amp_dtype=amp_dtype)
    if time_budget is not None:
        schedule, budget_info = fit_time_budget(cfg, schedule, time_budget, flop_model, times, loader)
        rates = schedule.rates()
    # --tokens resize: each rate costs what the smaller image's token count costs when sampled
    cost_rates = equivalent_keep_rates(rates, model_grid(flop_model)) if cfg.tokens == "resize" else rates
    model_time_fraction = times.time_fraction(cost_rates) if times else None
    time_fraction = times.time_fraction(cost_rates, loader) if times else None
    compute_fraction = flop_model.compute_fraction(cost_rates)
    levels = [{"keep_rate": r, "tokens": flop_model.num_prefix_tokens + keep_count(r, n),
               "gflops_per_image": flop_model.flops(r) / 1e9,
               "step_time_s": times.at_rate(r) if times else None, "share": share}
              for r, share in zip(rows, nearest_shares(rates, rows))]
    data_info = None
    if loader is not None and times is not None:
        for row in levels:
            row["predicted_step_s"] = loader.step_time(row["step_time_s"])
            row["data_wait_share"] = loader.wait_share(row["step_time_s"])
        scheduled = sorted(float(r) for r in np.unique(rates))
        bound = [r for r in scheduled if loader.wait_share(times.at_rate(r)) > DATA_WAIT_LIMIT]
        needed = cfg.batch_size / times.at_rate(scheduled[0])
        data_info = {"data": cfg.data, "augment": cfg.augment, "workers": loader.workers,
                     "images_per_s": loader.images_per_s, "batch_time_s": loader.batch_time,
                     "needed_images_per_s": needed, "wait_share": times.data_wait_share(rates, loader),
                     "data_bound_rates": bound, "advice": data_advice(cfg, loader, needed) if bound else []}
    hours_basis = time_fraction if time_fraction is not None else compute_fraction
    return {
        "model": cfg.model, "batch_size": cfg.batch_size, "device": str(device), "amp": cfg.amp,
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "sampler": cfg.sampler,
        "num_patches": n, "total_steps": schedule.total_steps, "steps_per_epoch_counted": counted,
        "schedule": schedule.to_dict(), "levels": levels, "shares_nearest": rows != grid_rates(schedule.quantum),
        "measured_tokens": sorted(flop_model.num_prefix_tokens + c for c in times.measured) if times else [],
        "distinct_rates": int(len(np.unique(rates))),
        "mean_keep_rate": schedule.mean_keep_rate(), "compute_fraction": compute_fraction,
        "time_fraction": time_fraction, "model_time_fraction": model_time_fraction, "data": data_info,
        "baseline_hours": baseline_hours,
        "predicted_hours": None if baseline_hours is None else baseline_hours * hours_basis,
        "predicted_hours_from": None if baseline_hours is None else
        ("time_fraction" if time_fraction is not None else "compute_fraction"),
        "budget": budget_info,
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as the table and summary lines that ``vitpss plan`` prints."""
    s = plan["schedule"]
    where = f"{plan['device']}" + (f", {plan['threads']} threads" if plan["threads"] else "")
    lines = [f"plan: {plan['model']}, batch {plan['batch_size']}, {where}, amp {plan['amp']}, sampler {plan['sampler']}",
             f"schedule: {as_flags(schedule_settings(KeepRateSchedule(**s)))} over {s['epochs']} epochs x "
             f"{s['steps_per_epoch']} steps" + (" (counted from the data)" if plan.get("steps_per_epoch_counted") else ""),
             "",
             f"{'keep rate':>9} {'tokens':>6} {'GFLOPs/img':>10} {'step (ms)':>9} {'vs 1.0':>6} {'share':>6}"
             + (f" {'+data (ms)':>10} {'wait':>5}" if plan["data"] else "")]
    full = plan["levels"][-1]["step_time_s"]
    for row in plan["levels"]:
        t = row["step_time_s"]
        ms, rel = (f"{t * 1e3:.1f}", f"{t / full:.2f}") if t is not None else ("-", "-")
        line = (f"{row['keep_rate']:>9.2f} {row['tokens']:>6d} {row['gflops_per_image']:>10.4g} {ms:>9} "
                f"{rel:>6} {row['share']:>6.1%}")
        if plan["data"]:
            line += f" {row['predicted_step_s'] * 1e3:>10.1f} {row['data_wait_share']:>5.0%}"
        lines.append(line)
    if plan["shares_nearest"]:
        lines.append("(share: steps whose keep rate is nearest to the row)")
    tf, data = plan["time_fraction"], plan["data"]
    basis = "the measured step times and data loader" if data else "the measured step times"
    lines += ["",
              f"mean keep rate    {plan['mean_keep_rate']:.3f}",
              f"compute fraction  {plan['compute_fraction']:.3f}  (training FLOPs over the same steps at keep rate 1)",
              "time fraction     " + (f"{tf:.3f}  (predicted from {basis})" if tf is not None
                                       else "-  (not measured: --no-measure)")]
    if data:
        lines += [f"model alone       {plan['model_time_fraction']:.3f}  (time fraction if data were free)",
                  f"data loader       {data['images_per_s']:.0f} images/s ({data['workers']} workers, augment "
                  f"{data['augment']}): {data['batch_time_s'] * 1e3:.1f} ms per batch; "
                  f"{data['wait_share']:.0%} of the run waiting for data"]
        if data["data_bound_rates"]:
            rates = ", ".join(f"{r:g}" for r in data["data_bound_rates"])
            lines.append(f"data-bound rates  {rates}  (over {DATA_WAIT_LIMIT:.0%} of the step waiting for data); "
                         f"to feed them:")
            lines += [f"  - {tip}" for tip in data["advice"]]
    lines.append(f"distinct rates    {plan['distinct_rates']}  (= graphs that vitpss train --compile builds)")
    if plan["predicted_hours"] is not None:
        lines.append(f"predicted hours   {plan['predicted_hours']:.2f} of {plan['baseline_hours']:g} "
                     f"(from the {plan['predicted_hours_from'].replace('_', ' ')})")
    b = plan["budget"]
    if b and b["kind"] == "compute":
        lines += ["", f"compute budget {b['target']:g}: low = {b['low']:g}", f"  flags: {b['flags']}", "  yaml:"]
        lines += ["    " + line for line in b["yaml"].splitlines()]
    elif b:
        cooldown = f", cooldown {b['cooldown_epochs']}" if b["cooldown_epochs"] else ""
        lines += ["", f"budget {b['fraction']:g} x the training time of {b['reference_epochs']} epochs at all patches: "
                  f"{b['epochs']} epochs{cooldown}, predicted {b['predicted_fraction']:.3f} (from {b['basis']}); "
                  f"vitpss train --epochs {b['reference_epochs']} --budget {b['fraction']:g} chooses the same way from "
                  f"its own calibration"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", description="What a keep-rate schedule will cost on a model, before "
                              "training: tokens, FLOPs and measured step time per keep rate; the schedule's compute "
                              "and time fraction; with data, the loader's speed.")
    p.add_argument("--config", metavar="FILE.yaml", help="a vitpss train config; flags override it")
    add_field_arguments(p, PLAN_FIELDS)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="training steps per epoch (default: counted from the data and --batch-size for one process, as vitpss "
                        "train would)")
    p.add_argument("--budget", type=float, help="what vitpss train --budget chooses: epochs whose predicted "
                   "time is this fraction of --epochs at all patches (default: no budget)")
    p.add_argument("--compute-budget", type=float, help="solve for --low so that the compute fraction is at most "
                   "this (default: no budget)")
    p.add_argument("--baseline-hours", type=float, help="hours of the same run with all patches (default: none)")
    p.add_argument("--no-measure", action="store_true", help="skip the step-time calibration (FLOPs only)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per keep rate, median (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per keep rate first (default: 1)")
    p.add_argument("--data-batches", type=int, default=10,
                   help="batches timed from the data loader when --data is given (default: 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in PLAN_FIELDS}
    base = load_config(args.config) if args.config else TrainConfig()
    cfg = validate(from_dict(given, base=base, source="command line"))
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch={args.steps_per_epoch} is out of range: it must be >= 1")
    if args.repeats < 1 or args.warmup < 0 or args.data_batches < 1:
        raise UsageError("--repeats and --data-batches must be >= 1 and --warmup >= 0")
    if args.compute_budget is not None and not 0 < args.compute_budget <= 1:
        raise UsageError(f"--compute-budget={args.compute_budget!r} is out of range: it must be in (0, 1]")
    if args.budget is not None and not 0 < args.budget <= 10:
        raise UsageError(f"--budget={args.budget!r} is out of range: it must be in (0, 10]")
    if args.baseline_hours is not None and args.baseline_hours <= 0:
        raise UsageError(f"--baseline-hours={args.baseline_hours} is out of range: it must be > 0")
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        plan = make_plan(cfg, steps_per_epoch=args.steps_per_epoch, budget=args.compute_budget,
                         time_budget=args.budget, measure=not args.no_measure,
                         baseline_hours=args.baseline_hours, repeats=args.repeats, warmup=args.warmup,
                         measure_data="data" in given or cfg.data != TrainConfig().data,
                         data_batches=args.data_batches)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(plan) if args.json else format_plan(plan), file=sys.stdout)
    return 0
