"""Patch sampling for Hugging Face ``transformers`` vision models.

HF vision transformers build their tokens in one ``embeddings`` module (patch embedding, class
and other prefix tokens, position embedding, dropout) whose output goes straight to the
encoder, or first through a pre-norm (CLIP's ``pre_layrnorm``). :func:`attach` gives each such
embeddings module a :class:`~vitpss.patching.PatchSampler` child and a forward hook that passes
the embeddings' output through it, so tokens are dropped before any pre-norm and the magnitude
samplers score the embedding after the position embedding, as for timm. The sampler has no
parameters or buffers: ``state_dict`` keys are unchanged, and at a keep rate of 1 the hook
returns its input, so outputs are bit-identical to the unmodified model.

Heads that fold the tokens back into the patch grid (masked image modelling, DINOv2 backbone
feature maps) cannot run on a subset: their forward raises :class:`ValueError` at a keep rate
below 1 instead of failing with a shape error inside the head.

This module never imports ``transformers``: a model can only be an HF model if the user has
imported it, so the family check looks at ``sys.modules`` first.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from .core import PatchSampler, check_full_grid, register_family

# Embeddings module class -> number of prefix (class, distillation, register) tokens it emits.
PREFIX_TOKENS: dict[str, Callable[[nn.Module], int]] = {
    "ViTEmbeddings": lambda embeddings: 1,
    "DeiTEmbeddings": lambda embeddings: 2,  # class + distillation token
    "Dinov2Embeddings": lambda embeddings: 1,
    "Dinov2WithRegistersEmbeddings": lambda embeddings: 1 + embeddings.register_tokens.shape[1],
    "CLIPVisionEmbeddings": lambda embeddings: 1,
    "SiglipVisionEmbeddings": lambda embeddings: 0,  # no class token: every token is a patch
}

# Model class -> whether, with this config, it reshapes the tokens back into the patch grid.
GRID_MODELS: dict[str, Callable[[nn.Module], bool]] = {
    "ViTForMaskedImageModeling": lambda model: True,
    "DeiTForMaskedImageModeling": lambda model: True,
    "Dinov2Backbone": lambda model: bool(model.config.reshape_hidden_states),
    "Dinov2WithRegistersBackbone": lambda model: bool(model.config.reshape_hidden_states),
}

FAMILY = ("Hugging Face transformers ViT, DeiT, Dinov2, Dinov2WithRegisters, CLIP vision tower, "
          "SigLIP vision tower (ViTModel, ...ForImageClassification, CLIPModel, SiglipModel, ...)")


def _is_transformers_class(module: nn.Module, names: dict[str, Any]) -> bool:
    cls = type(module)
    return cls.__name__ in names and cls.__module__.startswith("transformers.")


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The supported HF vision embeddings modules inside ``model`` (text embeddings are skipped)."""
    if "transformers" not in sys.modules:
        return []
    return [m for m in model.modules() if _is_transformers_class(m, PREFIX_TOKENS)]


def _sample_after_embeddings(embeddings: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return embeddings.patch_sampler(output)


def _num_patches(embeddings: nn.Module) -> int:
    """Patches per image at the configured image size (CLIP and SigLIP keep the count on the
    embeddings, the others on their ``patch_embeddings``)."""
    return int(getattr(embeddings, "num_patches", None) or embeddings.patch_embeddings.num_patches)


def _refuse_dropped_grid(model: nn.Module, args: tuple) -> None:
    if GRID_MODELS[type(model).__name__](model):
        check_full_grid(model, type(model).__name__,
                        "use vitpss.set_keep_rate(model, 1.0), or attach to a model without a grid head "
                        "(e.g. reshape_hidden_states=False for a backbone)")


def _install(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    for embeddings in embedding_modules(model):
        num_prefix_tokens = PREFIX_TOKENS[type(embeddings).__name__](embeddings)
        embeddings.patch_sampler = PatchSampler(sampler, num_prefix_tokens, generator,
                                                num_patches=_num_patches(embeddings))
        if _sample_after_embeddings not in embeddings._forward_hooks.values():
            embeddings.register_forward_hook(_sample_after_embeddings)
    for module in model.modules():
        if _is_transformers_class(module, GRID_MODELS) and _refuse_dropped_grid not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_refuse_dropped_grid)


register_family(FAMILY, lambda model: bool(embedding_modules(model)), _install)
