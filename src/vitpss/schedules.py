"""Keep-rate schedules: pure functions ``step -> keep rate``.

A schedule holds only its parameters; the rate at global step ``t`` is computed from ``t`` alone
(no counter, no ``step()``), so resume is exact, every data-parallel rank agrees, and a whole run
can be plotted or costed before training. Rates are keep rates ρ in (0, 1]: the fraction of patch
tokens fed to the transformer.

Two families:

* :func:`build_schedule` — vitpss schedules, parameterised by keep rates ``low``/``high``,
  rounded to a grid of ``quantum`` (half-up, never to 0).
* :func:`paper_schedule` — the original PSS code's schedulers value for value: drop ratios
  ``start_drop``/``end_drop`` (default 0.8 → −0.1), clamp, then Python's banker's rounding to
  steps of 0.2 (docs/method.md §2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

SCHEDULES = ("none", "fixed", "linear", "cosine", "cyclic")
PAPER_SCHEDULES = ("fixed", "linear", "cosine", "cyclic")

# Tolerance so that exact ties such as 0.3 / 0.2 = 1.4999999999999998 round up as written.
_TIE_EPS = 1e-9


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range: {name} must be {allowed}")


def quantize(rate: np.ndarray | float, quantum: float) -> np.ndarray:
    """Round keep rates half-up to multiples of ``quantum`` (0 = no rounding), never below one step.

    Never above 1 either: where ``quantum`` does not divide 1 (0.4, 0.15), rates that would round
    past 1 become 1 (all patches).
    """
    rate = np.asarray(rate, dtype=np.float64)
    if quantum <= 0:
        return rate
    levels = np.floor(rate / quantum + 0.5 + _TIE_EPS)
    return np.minimum(np.round(np.maximum(levels, 1.0) * quantum, 10), 1.0)


class _RunSummary:
    """Whole-run summaries shared by schedule classes that define ``rates()`` and ``total_steps``."""

    total_steps: int
    rates: Callable[..., np.ndarray]

    def mean_keep_rate(self) -> float:
        """Mean keep rate over every step of the run (cooldown included)."""
        return float(self.rates().mean())

    def levels(self) -> dict[float, float]:
        """Share of the run's steps spent at each distinct keep rate."""
        values, counts = np.unique(self.rates(), return_counts=True)
        return {float(v): float(c) / self.total_steps for v, c in zip(values, counts)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KeepRateSchedule(_RunSummary):
    """A keep-rate schedule over ``epochs * steps_per_epoch`` steps; call it with a global step.

    The last ``cooldown_epochs`` epochs use all patches. ``linear`` and ``cosine`` rise from
    ``low`` to ``high`` over the steps before the cooldown and then hold; ``cyclic`` is a triangle
    wave of ``period_steps`` steps (default: one epoch) that starts each period at ``low`` and
    reaches ``high`` mid-period. ``high`` may exceed 1 (the rate is clamped to 1 before rounding),
    which reproduces the paper's overshoot to a drop ratio of −0.1.
    """

    name: str
    low: float = 0.2
    high: float = 1.0
    steps_per_epoch: int = 1
    epochs: int = 1
    quantum: float = 0.2
    cooldown_epochs: int = 0
    period_steps: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}: choose one of {', '.join(SCHEDULES)}")
        _check("steps_per_epoch", self.steps_per_epoch, self.steps_per_epoch >= 1, "an integer >= 1")
        _check("epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        _check("low", self.low, 0 < self.low <= 1, "in (0, 1]")
        if self.name in ("linear", "cosine", "cyclic"):
            _check("high", self.high, self.low <= self.high <= 2, f"in [low={self.low}, 2]")
        _check("quantum", self.quantum, 0 <= self.quantum <= 1, "in [0, 1] (0 = no rounding)")
        _check("cooldown_epochs", self.cooldown_epochs, 0 <= self.cooldown_epochs <= self.epochs,
               f"in [0, epochs={self.epochs}]")
        if self.period_steps is not None:
            _check("period_steps", self.period_steps, self.period_steps >= 2, "an integer >= 2")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def sampled_steps(self) -> int:
        """Steps before the cooldown, over which the schedule runs."""
        return (self.epochs - self.cooldown_epochs) * self.steps_per_epoch

    def rates(self, steps: np.ndarray | None = None) -> np.ndarray:
        """Keep rates at ``steps`` (default: every step of the run), vectorised."""
        t = np.arange(self.total_steps) if steps is None else np.asarray(steps)
        t = t.astype(np.float64)
        raw = self._raw(t)
        rate = quantize(np.clip(raw, 0.0, 1.0), self.quantum)
        return np.where(t >= self.sampled_steps, 1.0, rate)

    def _raw(self, t: np.ndarray) -> np.ndarray:
        if self.name == "none":
            return np.ones_like(t)
        if self.name == "fixed":
            return np.full_like(t, self.low)
        if self.name == "cyclic":
            period = self.period_steps or self.steps_per_epoch
            if period < 2:
                return np.full_like(t, self.high)
            phase = np.mod(t, period) / period
            progress = 1.0 - np.abs(2.0 * phase - 1.0)
        else:
            progress = np.clip(t / max(self.sampled_steps - 1, 1), 0.0, 1.0)
            if self.name == "cosine":
                progress = (1.0 - np.cos(math.pi * progress)) / 2.0
        return self.low + (self.high - self.low) * progress

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step={step} is out of range: step must be >= 0")
        return float(self.rates(np.array([step]))[0])

@dataclass(frozen=True)
class PaperSchedule(_RunSummary):
    """The original PSS schedulers (``patch_scheduler.py``), reproduced value for value.

    Works in drop ratios ``d`` as the original did and returns the keep rate ``1 - d``. Formulas,
    end behaviour and rounding (clamp to [0, 1], then ``round(5 * d) / 5`` with banker's
    rounding) follow docs/method.md §2; ``fixed`` is the original's linear with start = end.
    """

    name: str
    steps_per_epoch: int
    epochs: int
    start_drop: float = 0.8
    end_drop: float = -0.1
    cooldown_epochs: int = 0

    def __post_init__(self) -> None:
        if self.name not in PAPER_SCHEDULES:
            raise ValueError(f"unknown paper schedule {self.name!r}: choose one of {', '.join(PAPER_SCHEDULES)}")
        _check("steps_per_epoch", self.steps_per_epoch, self.steps_per_epoch >= 1, "an integer >= 1")
        _check("epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        _check("cooldown_epochs", self.cooldown_epochs, 0 <= self.cooldown_epochs < self.epochs,
               f"in [0, epochs={self.epochs})")
        _check("start_drop", self.start_drop, -1 <= self.start_drop < 1, "in [-1, 1)")
        _check("end_drop", self.end_drop, -1 <= self.end_drop < 1, "in [-1, 1)")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def drop_ratio(self, t: int) -> float:
        s, e, ipe = self.start_drop, self.end_drop, self.steps_per_epoch
        T = (self.epochs - self.cooldown_epochs) * ipe
        if self.name == "fixed":
            d = s
        elif self.name == "linear":
            d = (1 - t / T) * s + (t / T) * e
        elif self.name == "cosine":
            if t <= 0:
                d = s
            elif t >= T - 1:
                d = e
            else:
                d = e + (s - e) * (1 + math.cos(math.pi * t / T)) / 2
        else:  # cyclic
            if t > T - 1:
                d = 0.0
            else:
                u = t % ipe
                p = u / (ipe / 2) if u <= ipe // 2 else (ipe - u) / (ipe / 2)
                d = (1 - p) * s + p * e
        d = min(max(d, 0.0), 1.0)
        return round(5 * d) / 5

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step={step} is out of range: step must be >= 0")
        return round(1.0 - self.drop_ratio(step), 10)

    def rates(self, steps: np.ndarray | None = None) -> np.ndarray:
        t = range(self.total_steps) if steps is None else np.asarray(steps).tolist()
        return np.array([self(int(s)) for s in t], dtype=np.float64)

def build_schedule(
    name: str,
    *,
    low: float = 0.2,
    high: float = 1.0,
    steps_per_epoch: int = 1,
    epochs: int = 1,
    quantum: float = 0.2,
    cooldown_epochs: int = 0,
    period_steps: int | None = None,
) -> KeepRateSchedule:
    """Build a keep-rate schedule by name (``none``, ``fixed``, ``linear``, ``cosine``, ``cyclic``).

    ``fixed`` runs at ``low`` throughout. Raises ``ValueError`` naming any invalid parameter.
    """
    return KeepRateSchedule(name=name, low=low, high=high, steps_per_epoch=steps_per_epoch,
                            epochs=epochs, quantum=quantum, cooldown_epochs=cooldown_epochs,
                            period_steps=period_steps)


def paper_schedule(
    name: str,
    *,
    steps_per_epoch: int,
    epochs: int,
    start_drop: float = 0.8,
    end_drop: float = -0.1,
    cooldown_epochs: int = 0,
) -> PaperSchedule:
    """The original code's schedule ``name`` with its drop-ratio parameters (docs/method.md §2)."""
    return PaperSchedule(name=name, steps_per_epoch=steps_per_epoch, epochs=epochs,
                         start_drop=start_drop, end_drop=end_drop, cooldown_epochs=cooldown_epochs)
