"""Realising a keep rate by resolution: fewer tokens from a smaller image (progressive resizing).

At keep rate ρ an ``H x W`` image on a ``p``-pixel patch grid is resized so that each side keeps
``sqrt(ρ)`` of its patches (rounded, at least one): the token count is then about ρ times the
full count, as with patch sampling, but every token sees the whole image at less detail
(EfficientTrain, FFCV's progressive resizing). The model reads the smaller image through timm's
``dynamic_img_size``: its one position embedding, kept at the full grid, is resampled to the
smaller grid in each forward (``resample_abs_pos_embed``); at the full size it is used as is, so
keep rate 1 is the unmodified model.

Why ``dynamic_img_size`` and not ``set_input_size``: the latter rewrites the position-embedding
parameter (a lossy resample at every size change, and the optimiser's moments would no longer
match it); the former leaves the parameter at full size and only resamples its value.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .config import TOKEN_MODES



def check_token_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`TOKEN_MODES`, else ValueError naming them."""
    if mode not in TOKEN_MODES:
        raise ValueError(f"unknown token mode {mode!r}: choose one of {', '.join(TOKEN_MODES)}")
    return mode


def grid_at_rate(rate: float, grid: Sequence[int]) -> tuple[int, int]:
    """Patch grid ``(rows, cols)`` of the image resized for keep ``rate`` from the full ``grid``."""
    if not 0 < rate <= 1:
        raise ValueError(f"keep rate {rate!r} is out of range: it must be in (0, 1]")
    scale = math.sqrt(rate)
    return tuple(max(1, min(g, round(g * scale))) for g in grid)  # type: ignore[return-value]


def size_at_rate(rate: float, img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int]:
    """Image size ``(H, W)`` in pixels for keep ``rate``: each side a multiple of the patch size."""
    grid = [s // p for s, p in zip(img_size, patch_size)]
    return tuple(g * p for g, p in zip(grid_at_rate(rate, grid), patch_size))  # type: ignore[return-value]


def patches_at_rate(rate: float, grid: Sequence[int]) -> int:
    """Patch tokens per image at keep ``rate`` (about ``rate`` times ``grid[0] * grid[1]``)."""
    rows, cols = grid_at_rate(rate, grid)
    return rows * cols


def equivalent_keep_rates(rates: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Patch-sampling keep rates with the token counts that resizing gives at ``rates`` (for FLOPs and plans)."""
    full = grid[0] * grid[1]
    return np.array([patches_at_rate(float(r), grid) / full for r in np.asarray(rates).ravel()], dtype=np.float64)


def resize_to_rate(images: torch.Tensor, rate: float, patch_size: Sequence[int]) -> torch.Tensor:
    """``images`` (B, C, H, W) resized for keep ``rate`` (bilinear, antialiased); unchanged at full size."""
    size = size_at_rate(rate, images.shape[-2:], patch_size)
    if tuple(size) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def model_patch_size(model: torch.nn.Module) -> tuple[int, int]:
    """The patch size of a timm ViT-style model (``patch_embed.patch_size``)."""
    size = model.patch_embed.patch_size
    return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]


def supports_resize(model: torch.nn.Module) -> bool:
    """Whether ``model`` reads any multiple of its patch size (timm's ``dynamic_img_size`` switched on)."""
    return bool(getattr(model, "dynamic_img_size", False))


@contextlib.contextmanager
def resized_inputs(model: torch.nn.Module, rate: float) -> Iterator[torch.nn.Module]:
    """Within the block, ``model`` resizes every input image for keep ``rate`` (a forward pre-hook).

    Raises ValueError if the model cannot read smaller images (build it with ``dynamic_img_size=True``).
    """
    if not supports_resize(model):
        raise ValueError(f"{type(model).__name__} cannot read smaller images: create it with dynamic_img_size=True "
                         f"(vitpss: --tokens resize)")
    patch = model_patch_size(model)
    handle = model.register_forward_pre_hook(lambda _, args: (resize_to_rate(args[0], rate, patch), *args[1:]))
    try:
        yield model
    finally:
        handle.remove()
