"""vitpss: Patch Sampling Schedules for faster Vision Transformer training on stock timm models."""

from .patching import (
    PatchSampler,
    attach,
    get_keep_indices,
    keep_rate,
    set_keep_rate,
    set_sampler,
    supported_families,
    token_count,
)
from . import models  # noqa: F401  (registers vitpss's timm models, e.g. vitpss_tiny_mnist)
from .samplers import SAMPLERS, keep_count
from .schedules import SCHEDULES, KeepRateSchedule, PaperSchedule, build_schedule, paper_schedule

__version__ = "0.3.0"

__all__ = [
    "PatchSampler", "attach", "get_keep_indices", "keep_rate", "set_keep_rate", "set_sampler",
    "supported_families", "token_count", "SAMPLERS", "keep_count", "SCHEDULES", "KeepRateSchedule",
    "PaperSchedule", "build_schedule", "paper_schedule", "__version__",
]
