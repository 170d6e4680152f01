"""timm ``VisionTransformer`` family (ViT, DeiT, DeiT-III, register models).

The model calls ``self.patch_drop(x)`` right after the position embedding; the sampler takes
that slot, so no forward is replaced. ``forward_intermediates(output_fmt="NCHW")`` folds the
tokens back into the patch grid and raises :class:`ValueError` at a keep rate below 1
(``output_fmt="NLC"`` works at any rate).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .core import PatchSampler, guard_grid_intermediates, register_family


def timm_patch_sampler(model: nn.Module, sampler: str, generator: Optional[torch.Generator],
                       return_indices: bool = False) -> PatchSampler:
    """A sampler for a timm model: its prefix tokens, and the patch count of its configured image size
    (``patch_embed.num_patches``; a ``dynamic_img_size`` model may run on other sizes)."""
    return PatchSampler(sampler, model.num_prefix_tokens, generator, return_indices,
                        num_patches=model.patch_embed.num_patches)


def _is_vision_transformer(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _install_vision_transformer(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # A pre-existing timm PatchDropout is replaced: PSS takes over its job.
    model.patch_drop = timm_patch_sampler(model, sampler, generator)
    guard_grid_intermediates(model)


register_family("timm VisionTransformer (ViT, DeiT, DeiT-III, register tokens)",
                _is_vision_transformer, _install_vision_transformer)
