"""vitpss: Patch Sampling Schedules for faster Vision Transformer training on stock timm models.

The names below are imported on first use (PEP 562), so ``import vitpss`` and ``vitpss --help``
do not load torch. vitpss's timm models (e.g. ``vitpss_tiny_mnist``) are registered with timm on
first use of any of them, and at once when timm is already imported (``import timm, vitpss``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.3.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("PatchSampler", "attach", "get_keep_indices", "keep_rate", "set_keep_rate", "set_sampler",
                     "supported_families", "token_count"), "vitpss.patching"),
    **dict.fromkeys(("SAMPLERS", "keep_count"), "vitpss.samplers"),
    **dict.fromkeys(("SCHEDULES", "KeepRateSchedule", "PaperSchedule", "build_schedule", "paper_schedule"),
                    "vitpss.schedules"),
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        importlib.import_module("vitpss.models")  # registers vitpss's timm models before any model is built
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitpss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "timm" in sys.modules:  # a user's `import timm, vitpss` finds vitpss_tiny_mnist at once (timm costs nothing more)
    importlib.import_module("vitpss.models")
