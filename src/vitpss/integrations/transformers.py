"""A Hugging Face ``TrainerCallback`` that sets the keep rate of an attached model every step.

    model = vitpss.attach(ViTForImageClassification(config))
    trainer = Trainer(model=model, args=args, ..., callbacks=[PatchSamplingCallback("cyclic", low=0.2)])

The rate comes from ``state.global_step`` (optimizer steps; the Trainer calls ``on_step_begin``
once per gradient-accumulation step), and the schedule is sized on exactly ``state.max_steps``
steps and the optimizer steps per epoch. It is a pure function of the step, so
``resume_from_checkpoint`` continues it exactly. The rate is added to the Trainer's training logs
as ``keep_rate``; the Trainer runs its reporting integrations (``report_to``: W&B, TensorBoard,
MLflow, ...) before the callbacks it is given, so to have them record it, put the callback first:

    put_first(trainer, callback)

Evaluation runs in eval mode and uses all patches unless an inference rate is set.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from ..patching import check_keep_rate, patch_samplers
from . import DeferredSchedule, ScheduleLike, import_extra

_transformers = import_extra("transformers", "hf", "vitpss.integrations.transformers")


class PatchSamplingCallback(_transformers.TrainerCallback):
    """Sets the training keep rate from ``state.global_step`` at the start of every step.

    ``schedule``: a name from :data:`vitpss.SCHEDULES` (sized from the Trainer's run unless
    ``total_steps`` / ``steps_per_epoch`` are given) or a callable ``step -> keep rate``. Other
    keywords as in :func:`vitpss.build_schedule`.
    """

    def __init__(self, schedule: ScheduleLike = "cyclic", *, low: float = 0.2, high: float = 1.0,
                 quantum: float = 0.2, cooldown_epochs: int = 0, period_steps: Optional[int] = None,
                 total_steps: Optional[int] = None, steps_per_epoch: Optional[int] = None) -> None:
        self.schedule = DeferredSchedule(schedule, low=low, high=high, quantum=quantum,
                                         cooldown_epochs=cooldown_epochs, period_steps=period_steps,
                                         total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        self.keep_rate: Optional[float] = None
        self.samplers: list = []
        self.first = False  # set by put_first: runs before the reporting integrations

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        self.samplers = patch_samplers(model) if model is not None else []  # found once, not every step
        if not self.samplers:
            raise TypeError(f"{type(model).__name__} has no patch sampler: call vitpss.attach(model) "
                            f"before building the Trainer")
        report_to = [args.report_to] if isinstance(args.report_to, str) else args.report_to or []
        reporting = [r for r in report_to if r != "none"]
        if reporting and not self.first:
            warnings.warn(f"keep_rate is added to the logs after {', '.join(reporting)} recorded them: call "
                          f"vitpss.integrations.transformers.put_first(trainer, callback) before trainer.train()",
                          stacklevel=2)
        per_epoch = None
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        self.schedule.resolve(state.max_steps, per_epoch)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.keep_rate = check_keep_rate(self.schedule(state.global_step))
        for sampler in self.samplers:
            sampler.train_keep_rate = self.keep_rate

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs or self.keep_rate is None:
            return  # evaluation logs: the training rate does not apply
        logs["keep_rate"] = self.keep_rate
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["keep_rate"] = self.keep_rate  # the Trainer stored a copy of `logs`


def put_first(trainer: Any, callback: PatchSamplingCallback) -> PatchSamplingCallback:
    """Make ``callback`` the first of ``trainer``'s callbacks (adding it, or moving it if present).

    The Trainer calls its reporting integrations (``report_to``) before the callbacks passed as
    ``callbacks=``, so they log before ``keep_rate`` is added; first in the list, the callback adds
    it to the logs they receive. Returns ``callback``.
    """
    handler = trainer.callback_handler
    handler.callbacks = [callback] + [c for c in handler.callbacks if c is not callback]
    callback.first = True
    return callback
