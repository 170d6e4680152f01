"""timm ``VisionTransformer`` family (ViT, DeiT, DeiT-III, register models).

The model calls ``self.patch_drop(x)`` right after the position embedding; the sampler takes
that slot, so no forward is replaced. A forward pre-hook draws the random samplers' noise before the
model's forward (see :class:`~vitpss.patching.PatchSampler`), for every timm family.
``forward_intermediates(output_fmt="NCHW")`` folds the tokens back into the patch grid and raises
:class:`ValueError` at a keep rate below 1 (``output_fmt="NLC"`` works at any rate).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .core import PatchSampler, draw_noise_eagerly, guard_grid_intermediates, register_family, skip_as_compiled_frame


def timm_patch_sampler(model: nn.Module, sampler: str, generator: Optional[torch.Generator],
                       return_indices: bool = False) -> PatchSampler:
    """A sampler for a timm model: its prefix tokens, and the patch count of its configured image size
    (``patch_embed.num_patches``; a ``dynamic_img_size`` model may run on other sizes)."""
    return PatchSampler(sampler, model.num_prefix_tokens, generator, return_indices,
                        num_patches=model.patch_embed.num_patches)


def _is_vision_transformer(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def draw_patch_noise(model: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a timm model with a sampler in ``patch_drop``: draw its noise for ``args[0]``.

    Only the draw itself is hidden from dynamo: when the model runs inside a compiled wrapper
    (``torch.compile(Wrapper(model))``, a compiled LightningModule), the hook is traced, and a
    forward that draws nothing (``magnitude``, keep rate 1, no generator) has no graph break.
    """
    grid_size = getattr(model.patch_embed, "dynamic_feat_size", None)  # timm's patch and hybrid embeddings
    if grid_size is not None and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        images, sampler = args[0], model.patch_drop
        num_patches = math.prod(grid_size(tuple(images.shape[-2:])))
        if sampler.needs_noise(num_patches):
            draw_noise_eagerly(sampler, images.shape[0], num_patches, images.device)
    # otherwise the sampler draws the noise in the forward


skip_as_compiled_frame(draw_patch_noise)


def install_timm_sampler(model: nn.Module, sampler: PatchSampler) -> None:
    """Put ``sampler`` in ``model.patch_drop`` and draw its noise before each forward (hook added once)."""
    model.patch_drop = sampler
    if draw_patch_noise not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(draw_patch_noise)


def _install_vision_transformer(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # A pre-existing timm PatchDropout is replaced: PSS takes over its job.
    install_timm_sampler(model, timm_patch_sampler(model, sampler, generator))
    guard_grid_intermediates(model)


register_family("timm VisionTransformer (ViT, DeiT, DeiT-III, register tokens)",
                _is_vision_transformer, _install_vision_transformer)
