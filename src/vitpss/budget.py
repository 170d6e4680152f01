"""What a run's steps cost, and fitting a recipe into a time budget (``vitpss train --budget F``).

A budget ``F`` is a fraction of the training time of the same run at all patches for its
``--epochs E``. Given the seconds of one step at each keep rate (the model's step, measured, plus
waiting for the data loader), :func:`solve_epochs` finds the largest number of epochs whose
schedule (the same shape, stretched or shrunk; its cooldown in proportion) is predicted to take
at most ``F`` times ``E`` epochs at keep rate 1. Training time means the steps and their data
waits; evaluations are not counted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from .config import TrainConfig
from .data import build_loader, default_workers
from .schedules import KeepRateSchedule


@dataclasses.dataclass(frozen=True)
class LoaderSpeed:
    """Measured throughput of the training loader: ``images_per_s`` with ``workers`` workers."""

    images_per_s: float
    workers: int
    batch_size: int

    @property
    def batch_time(self) -> float:
        """Seconds to deliver one batch."""
        return self.batch_size / self.images_per_s

    def step_time(self, model_time: float) -> float:
        """Predicted seconds of a training step whose model part takes ``model_time``.

        Without workers the main process loads between steps (the times add up); with workers,
        loading overlaps the step and the slower of the two sets the pace.
        """
        if self.workers == 0:
            return model_time + self.batch_time
        return max(model_time, self.batch_time)

    def wait_share(self, model_time: float) -> float:
        """Share of the predicted step spent waiting for data."""
        step = self.step_time(model_time)
        return (step - model_time) / step


def measure_loader(train_ds: torch.utils.data.Dataset, cfg: TrainConfig, device: torch.device, *,
                   batches: int = 10) -> LoaderSpeed:
    """Images/s of the training loader ``vitpss train`` builds over ``train_ds`` for ``cfg`` (one process).

    The first batches are not timed: ``2 * workers`` (what the workers have ready when the loop
    starts), at least 1. Epochs are repeated when the data has fewer batches than needed.
    """
    loader = build_loader(train_ds, cfg, True, device=device)
    workers = default_workers(cfg)
    skip = max(1, 2 * workers)
    seen, start, epoch = 0, 0.0, 0
    while seen < skip + batches:
        loader.sampler.set_epoch(epoch)
        for _ in loader:
            seen += 1
            if seen == skip:
                start = time.perf_counter()
            if seen == skip + batches:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return LoaderSpeed(images_per_s=batches * loader.batch_size / elapsed, workers=workers,
                       batch_size=loader.batch_size)


def scaled_schedule(schedule: KeepRateSchedule, epochs: int, reference_epochs: int) -> KeepRateSchedule:
    """``schedule`` (written for ``reference_epochs``) over ``epochs``, its cooldown in proportion (>= 1 if any)."""
    cooldown = schedule.cooldown_epochs
    if cooldown:
        cooldown = min(epochs, max(1, round(cooldown * epochs / reference_epochs)))
    return dataclasses.replace(schedule, epochs=epochs, cooldown_epochs=cooldown)


def predicted_seconds(schedule: KeepRateSchedule, step_time: Callable[[float], float]) -> float:
    """Predicted training seconds of every step of ``schedule`` (``step_time(rate)`` per step)."""
    values, counts = np.unique(schedule.rates(), return_counts=True)
    return float(sum(step_time(float(v)) * int(c) for v, c in zip(values, counts)))


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
    """The epochs :func:`solve_epochs` chose for a budget, and the time it predicts for them."""

    fraction: float  # the budget: a fraction of the all-patch run's time
    reference_epochs: int  # E: the all-patch run the budget refers to
    epochs: int  # chosen
    cooldown_epochs: int  # chosen (the recipe's, in proportion)
    predicted_fraction: float  # predicted training time over that of E epochs at all patches
    step_time_s: Mapping[float, float]  # predicted seconds per step at each keep rate of the run

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_time_s"] = {f"{k:g}": v for k, v in self.step_time_s.items()}
        return d


def solve_epochs(schedule: KeepRateSchedule, step_time: Callable[[float], float], fraction: float,
                 *, max_factor: int = 50) -> BudgetChoice:
    """The most epochs of ``schedule``'s shape whose predicted time is at most ``fraction`` x its length at keep rate 1.

    ``schedule`` is the recipe over the reference ``epochs`` E; ``step_time(rate)`` gives the
    seconds of one step. Raises ValueError when not even one epoch fits.
    """
    if not fraction > 0:
        raise ValueError(f"budget {fraction!r} is out of range: it must be > 0")
    E, steps = schedule.epochs, schedule.steps_per_epoch
    full = step_time(1.0)
    target = fraction * E * steps * full
    best: Optional[tuple[int, float]] = None
    for epochs in range(1, max_factor * E + 1):
        seconds = predicted_seconds(scaled_schedule(schedule, epochs, E), step_time)
        if seconds <= target * (1 + 1e-9):
            best = (epochs, seconds)
        elif epochs * steps * min(step_time(r) for r in np.unique(schedule.rates())) > target:
            break  # even the cheapest steps cannot fit more epochs
    if best is None:
        one = predicted_seconds(scaled_schedule(schedule, 1, E), step_time) / (E * steps * full)
        raise ValueError(f"budget {fraction:g} is not reachable: one epoch of this recipe takes {one:.3f} of the "
                         f"all-patch time of {E} epochs; raise the budget or --epochs")
    epochs, seconds = best
    chosen = scaled_schedule(schedule, epochs, E)
    rates = sorted({float(r) for r in np.unique(chosen.rates())} | {1.0})
    return BudgetChoice(fraction=fraction, reference_epochs=E, epochs=epochs, cooldown_epochs=chosen.cooldown_epochs,
                        predicted_fraction=seconds / (E * steps * full), step_time_s={r: step_time(r) for r in rates})


def grid_rates(quantum: float) -> list[float]:
    """Every keep rate a schedule with this ``quantum`` can produce (multiples of it, and 1); [] for 0."""
    if quantum <= 0:
        return []
    steps = math.ceil(1.0 / quantum - 1e-9)
    return sorted({round(min(k * quantum, 1.0), 10) for k in range(1, steps + 1)} | {1.0})


def rates_to_measure(schedule: KeepRateSchedule) -> list[float]:
    """Keep rates a scaled ``schedule`` can take (its grid from its lowest rate up, when quantised;
    else its own rates), and 1."""
    rates = {float(r) for r in np.unique(schedule.rates())} | {1.0}
    if schedule.quantum > 0 and schedule.name != "none":
        rates |= {r for r in grid_rates(schedule.quantum) if r >= min(rates) - 1e-9}
    return sorted(rates)


def interpolated(times: Mapping[float, float]) -> Callable[[float], float]:
    """``rate -> seconds`` through the measured rates (linear between them, nearest beyond).

    A step with fewer tokens never costs more than one with more: a measured time above that of a
    higher rate (noise on a busy machine) is taken as the higher rate's.
    """
    xs = sorted(times)
    ys = list(np.minimum.accumulate([times[x] for x in reversed(xs)]))[::-1]
    return lambda rate: float(np.interp(rate, xs, ys))
