"""Keep-rate schedules inside other people's training loops (Lightning, the Hugging Face Trainer).

``vitpss.integrations.lightning.PatchSamplingSchedule`` and
``vitpss.integrations.transformers.PatchSamplingCallback`` are callbacks; importing this package
imports neither framework. Both hold a :class:`DeferredSchedule`: a schedule named here whose
length is only known when the framework starts training.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any, Callable, Optional, Union

from ..schedules import KeepRateSchedule

ScheduleLike = Union[str, Callable[[int], float]]


def import_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise a one-line ``ImportError`` naming the vitpss extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{feature} needs {module.split('.')[0]} ({error}): "
                          f"pip install 'vitpss[{extra}]'") from None


class DeferredSchedule:
    """A keep-rate schedule ``step -> rate`` that is sized when training starts.

    ``schedule`` is a schedule name (see :data:`vitpss.SCHEDULES`; ``low``, ``high``, ``quantum``,
    ``cooldown_epochs`` and ``period_steps`` as in :func:`vitpss.build_schedule`), or any
    ready-made callable such as ``vitpss.build_schedule(...)`` or ``vitpss.paper_schedule(...)``,
    used as it is. ``total_steps`` / ``steps_per_epoch`` override what the framework reports.
    """

    def __init__(self, schedule: ScheduleLike = "cyclic", *, low: float = 0.2, high: float = 1.0,
                 quantum: float = 0.2, cooldown_epochs: int = 0, period_steps: Optional[int] = None,
                 total_steps: Optional[int] = None, steps_per_epoch: Optional[int] = None) -> None:
        self.params = dict(low=low, high=high, quantum=quantum, cooldown_epochs=cooldown_epochs,
                           period_steps=period_steps)
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        if callable(schedule):
            self.name, self.schedule = None, schedule
        else:  # validate the parameters now, with the user's code still on screen
            KeepRateSchedule(schedule, steps_per_epoch=2, epochs=max(cooldown_epochs, 1), **self.params)
            self.name, self.schedule = schedule, None

    @property
    def resolved(self) -> bool:
        return self.schedule is not None

    def resolve(self, total_steps: float, steps_per_epoch: Optional[float]) -> None:
        """Size a named schedule for a run of ``total_steps`` optimizer steps (no-op once sized)."""
        if self.resolved:
            return
        total = self.total_steps or total_steps
        if not math.isfinite(total) or total < 1:
            raise ValueError(f"cannot size the {self.name!r} keep-rate schedule for a run of {total} steps: "
                             f"pass total_steps= to the callback")
        per_epoch = self.steps_per_epoch or steps_per_epoch
        per_epoch = int(per_epoch) if per_epoch and math.isfinite(per_epoch) else int(total)
        epochs = max(math.ceil(total / per_epoch), 1)
        self.schedule = KeepRateSchedule(self.name, steps_per_epoch=per_epoch, epochs=epochs, **self.params)

    def __call__(self, step: int) -> float:
        if self.schedule is None:
            raise RuntimeError("the keep-rate schedule is not sized yet: training has not started")
        return self.schedule(step)

    def state_dict(self) -> dict[str, Any]:
        """The sized named schedule (empty for a user's callable, which the user rebuilds)."""
        return self.schedule.to_dict() if self.name is not None and self.resolved else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and self.name is not None:
            self.schedule = KeepRateSchedule(**state)
