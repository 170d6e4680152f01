"""Patch sampling inside timm models: :func:`attach` a sampler, then set its keep rate."""

from .core import (
    PatchSampler,
    attach,
    check_keep_rate,
    get_keep_indices,
    keep_rate,
    num_patches,
    patch_samplers,
    register_family,
    set_keep_rate,
    set_sampler,
    supported_families,
    token_count,
)
# register the families, timm's first; the transformers and open_clip ones import neither package
from . import vit, relpos, transformers, open_clip  # noqa: F401,E402

__all__ = ["PatchSampler", "attach", "check_keep_rate", "get_keep_indices", "keep_rate", "num_patches", "patch_samplers",
           "register_family", "set_keep_rate", "set_sampler", "supported_families", "token_count"]
