"""A Lightning callback that sets the keep rate of an attached model at every training step.

    model = vitpss.attach(timm.create_model(...))           # inside your LightningModule
    trainer = L.Trainer(callbacks=[PatchSamplingSchedule("cyclic", low=0.2)])

The rate comes from ``trainer.global_step`` (optimizer steps), so the micro-batches of one
gradient-accumulation step share a rate, and it is logged as ``keep_rate``. Validation runs in
eval mode and so uses all patches unless an inference rate is set (``vitpss.set_keep_rate(model,
rate, inference=True)``). The sized schedule is saved in checkpoints: a resumed run continues the
same schedule even if the resumed trainer would size it differently.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..patching import check_keep_rate, patch_samplers
from . import DeferredSchedule, ScheduleLike, import_extra

try:
    import lightning.pytorch as _pl
except ImportError:
    try:  # the standalone package, for projects that still use it
        import pytorch_lightning as _pl
    except ImportError:
        _pl = import_extra("lightning.pytorch", "lightning", "vitpss.integrations.lightning")


class PatchSamplingSchedule(_pl.Callback):
    """Sets the training keep rate from ``trainer.global_step`` before every training batch.

    ``schedule``: a name from :data:`vitpss.SCHEDULES` (sized from
    ``trainer.estimated_stepping_batches`` and the optimizer steps per epoch unless
    ``total_steps`` / ``steps_per_epoch`` are given) or a callable ``step -> keep rate``.
    Other keywords as in :func:`vitpss.build_schedule`. ``log=False`` turns the logging off.
    """

    def __init__(self, schedule: ScheduleLike = "cyclic", *, low: float = 0.2, high: float = 1.0,
                 quantum: float = 0.2, cooldown_epochs: int = 0, period_steps: Optional[int] = None,
                 total_steps: Optional[int] = None, steps_per_epoch: Optional[int] = None,
                 log: bool = True) -> None:
        self.schedule = DeferredSchedule(schedule, low=low, high=high, quantum=quantum,
                                         cooldown_epochs=cooldown_epochs, period_steps=period_steps,
                                         total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        self.log_keep_rate = log
        self.samplers: list = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.samplers = patch_samplers(pl_module)  # found once: no walk over the modules every step
        if not self.samplers:
            raise TypeError(f"{type(pl_module).__name__} has no patch sampler: call vitpss.attach on its model first")
        total = trainer.estimated_stepping_batches  # also sets up the train dataloader
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
        self.schedule.resolve(total, per_epoch)  # no-op after a resume: the checkpoint's schedule holds

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        rate = check_keep_rate(self.schedule(trainer.global_step))
        for sampler in self.samplers:
            sampler.train_keep_rate = rate
        if self.log_keep_rate:
            pl_module.log("keep_rate", rate, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)
