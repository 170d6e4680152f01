"""timm ``VisionTransformer`` family (ViT, DeiT, DeiT-III, register models).

The model calls ``self.patch_drop(x)`` right after the position embedding; the sampler takes
that slot, so no forward is replaced.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .core import PatchSampler, register_family


def _is_vision_transformer(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _install_vision_transformer(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # A pre-existing timm PatchDropout is replaced: PSS takes over its job.
    model.patch_drop = PatchSampler(sampler, model.num_prefix_tokens, generator)


register_family("timm VisionTransformer (ViT, DeiT, DeiT-III, register tokens)",
                _is_vision_transformer, _install_vision_transformer)
