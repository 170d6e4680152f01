"""Patch sampling for Hugging Face ``transformers`` vision models.

HF vision transformers build their tokens in one ``embeddings`` module (patch embedding, class
and other prefix tokens, position embedding, dropout) whose output goes straight to the
encoder, or first through a pre-norm (CLIP's ``pre_layrnorm``). :func:`attach` gives each such
embeddings module a :class:`~vitpss.patching.PatchSampler` child and a forward that passes the
embeddings' output through it (:class:`SampledEmbeddings`, a class swap), so tokens are dropped
before any pre-norm and the magnitude samplers score the embedding after the position embedding,
as for timm. The sampler has no parameters or buffers: ``state_dict`` keys are unchanged, and at a
keep rate of 1 it returns its input, so outputs are bit-identical to the unmodified model.

Heads that fold the tokens back into the patch grid (masked image modelling, DINOv2 backbone
feature maps) cannot run on a subset: their forward raises :class:`ValueError` at a keep rate
below 1 instead of failing with a shape error inside the head.

Classes are matched along the class hierarchy, so subclasses of the supported classes are handled
as their base. Vision-language models that take one language-model token per patch (LLaVA,
PaliGemma, ...) are refused with a :class:`TypeError`, and an ``attention_mask`` over all tokens at
a keep rate below 1 with a :class:`ValueError`.

This module never imports ``transformers``: a model can only be an HF model if the user has
imported it, so the family check looks at ``sys.modules`` first.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from .core import (PatchSampler, Patched, check_full_grid, patch_class, patch_samplers, plan_noise_ahead,
                   register_family)

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


# Vision-language models that put one language-model token per image patch: dropping patches breaks them.
VISION_LANGUAGE_MODELS = ("Llava", "VideoLlava", "VipLlava", "PaliGemma", "Idefics", "Gemma3", "InternVL", "Blip2",
                          "InstructBlip", "Qwen2VL", "AyaVision", "Mistral3")


def transformers_class(module: nn.Module, names: Any) -> Optional[str]:
    """The name of the most specific class of ``module`` that is a ``transformers`` class listed in
    ``names``, or ``None``: a user subclass of a supported class is handled as that class."""
    for cls in type(module).__mro__:
        if cls.__name__ in names and cls.__module__.startswith("transformers."):
            return cls.__name__
    return None


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The supported HF vision embeddings modules inside ``model`` (text embeddings are skipped)."""
    if "transformers" not in sys.modules:
        return []
    return [m for m in model.modules() if transformers_class(m, PREFIX_TOKENS)]


def _vision_language_model(model: nn.Module) -> Optional[str]:
    """The class name of a known vision-language wrapper among ``model``'s modules, else ``None``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        image_token = getattr(config, "image_token_id", None) if config is not None else None
        named = any(cls.__name__.startswith(VISION_LANGUAGE_MODELS) and cls.__module__.startswith("transformers.")
                    for cls in type(module).__mro__)
        if named or image_token is not None:
            return type(module).__name__
    return None


class SampledEmbeddings(Patched):
    """HF vision embeddings whose output (prefix tokens first) passes through ``patch_sampler``."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.patch_sampler(super().forward(*args, **kwargs))  # type: ignore[misc]


def _num_patches(embeddings: nn.Module) -> int:
    """Patches per image at the configured image size (CLIP and SigLIP keep the count on the
    embeddings, the others on their ``patch_embeddings``)."""
    return int(getattr(embeddings, "num_patches", None) or embeddings.patch_embeddings.num_patches)


def _patch_size(embeddings: nn.Module) -> Optional[tuple[int, int]]:
    """``(height, width)`` of a patch (ViT, DeiT and Dinov2 keep it on ``patch_embeddings``, CLIP and SigLIP
    on the embeddings), or ``None`` if neither has it."""
    size = getattr(getattr(embeddings, "patch_embeddings", None), "patch_size", None)
    size = getattr(embeddings, "patch_size", None) if size is None else size
    if isinstance(size, int):
        return size, size
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) and len(size) == 2 else None


def _refuse_dropped_grid(model: nn.Module, args: tuple) -> None:
    if GRID_MODELS[transformers_class(model, GRID_MODELS)](model):
        check_full_grid(model, type(model).__name__,
                        "use vitpss.set_keep_rate(model, 1.0), or attach to a model without a grid head "
                        "(e.g. reshape_hidden_states=False for a backbone)")


def _refuse_attention_mask(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Pre-hook of a vision model whose forward takes an ``attention_mask``: the mask covers all tokens."""
    if kwargs.get("attention_mask") is not None:
        rate = min((s.active_keep_rate for s in patch_samplers(model)), default=1.0)
        if rate < 1.0:
            raise ValueError(f"{type(model).__name__} got an attention_mask over all patch tokens but runs at keep "
                             f"rate {rate}: pass attention_mask=None, or use vitpss.keep_rate(model, 1.0)")


def _install(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    wrapper = _vision_language_model(model)
    if wrapper is not None:
        raise TypeError(f"vitpss.attach does not support the vision-language model {wrapper}: its language model "
                        f"takes one image token per patch, so dropping patches breaks it; attach to a vision "
                        f"encoder (e.g. CLIPVisionModel, SiglipVisionModel) trained on its own")
    for module in model.modules():
        embeddings = getattr(module, "embeddings", None)
        if isinstance(embeddings, nn.Module) and transformers_class(embeddings, PREFIX_TOKENS) \
                and "attention_mask" in inspect.signature(module.forward).parameters \
                and _refuse_attention_mask not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_refuse_attention_mask, with_kwargs=True)
    plan = []
    for embeddings in embedding_modules(model):
        num_prefix_tokens = PREFIX_TOKENS[transformers_class(embeddings, PREFIX_TOKENS)](embeddings)
        embeddings.patch_sampler = PatchSampler(sampler, num_prefix_tokens, generator,
                                                num_patches=_num_patches(embeddings))
        patch_class(embeddings, SampledEmbeddings)
        patch_size = _patch_size(embeddings)
        if patch_size is not None:
            plan.append((embeddings.patch_sampler, patch_size, "pixel_values"))
    plan_noise_ahead(model, plan)  # so that torch.compile(model) (Trainer's torch_compile) has no graph break
    for module in model.modules():
        if transformers_class(module, GRID_MODELS) and _refuse_dropped_grid not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_refuse_dropped_grid)


register_family(FAMILY, lambda model: bool(embedding_modules(model)), _install)
