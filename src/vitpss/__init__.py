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
from . import beit_models, patching_relpos  # noqa: F401  (timm BEiT-style models; BEiT/EVA families for attach)
from . import patching_open_clip, patching_transformers  # noqa: F401  (families for attach; import no extras)
from .samplers import SAMPLERS, keep_count
from .schedules import SCHEDULES, KeepRateSchedule, PaperSchedule, build_schedule, paper_schedule

__version__ = "0.1.0"

__all__ = [
    "PatchSampler", "attach", "get_keep_indices", "keep_rate", "set_keep_rate", "set_sampler",
    "supported_families", "token_count", "SAMPLERS", "keep_count", "SCHEDULES", "KeepRateSchedule",
    "PaperSchedule", "build_schedule", "paper_schedule", "__version__",
]
