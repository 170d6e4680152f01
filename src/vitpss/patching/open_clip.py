"""Patch sampling for ``open_clip`` image towers and whole CLIP models.

open_clip's ``VisionTransformer`` calls ``self.patch_dropout(x)`` right after the class token
and positional embedding and before ``ln_pre``: FLIP-style patch dropout at a fixed rate.
:func:`attach` puts a :class:`~vitpss.patching.PatchSampler` (one prefix token) into that slot,
so the rate can change every step and can apply at inference. Towers built on timm
(``TimmModel``, ``visual.trunk``) get the timm family's sampler in their trunk. A whole
``CLIP``/``CustomTextCLIP``/``CoCa`` model is handled through its ``visual`` tower; the text
tower is left alone. No parameters or buffers are added and at a keep rate of 1 the stock code
runs, so ``state_dict`` keys and outputs are those of the unmodified model.

``forward_intermediates(output_fmt="NCHW")`` folds the tokens back into the patch grid and
raises :class:`ValueError` at a keep rate below 1 (``output_fmt="NLC"`` works at any rate); towers
without the method (open_clip 2.24-2.30) are left without it.

This module never imports ``open_clip`` unless the user already has.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

from .core import PatchSampler, attach, guard_grid_intermediates, plan_noise_ahead, register_family

FAMILY = ("open_clip VisionTransformer and timm towers (visual.trunk), or a whole CLIP / "
          "CustomTextCLIP / CoCa model (its visual tower)")


def vision_tower(model: nn.Module) -> Optional[nn.Module]:
    """``model`` itself if it is an open_clip image tower, else its ``visual`` tower, else ``None``."""
    if "open_clip" not in sys.modules:
        return None
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    for candidate in (model, getattr(model, "visual", None)):
        if isinstance(candidate, (VisionTransformer, TimmModel)):
            return candidate
    return None


def _install(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    tower = vision_tower(model)
    if hasattr(tower, "trunk"):  # TimmModel: a timm model inside an adapter; its family guards the grid output
        attach(tower.trunk, sampler, generator)
        return
    # takes over open_clip's PatchDropout
    tower.patch_dropout = PatchSampler(sampler, 1, generator, num_patches=tower.grid_size[0] * tower.grid_size[1])
    guard_grid_intermediates(tower)
    # drawn before the forward of what was attached, so that torch.compile(model) has no graph break
    plan_noise_ahead(model, [(tower.patch_dropout, tuple(tower.patch_size), "x" if model is tower else "image")])


register_family(FAMILY, lambda model: vision_tower(model) is not None, _install)
