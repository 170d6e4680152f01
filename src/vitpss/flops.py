"""FLOPs of a model at a keep rate, and the compute of a whole schedule relative to all patches.

Counting uses ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; one
multiply-add = 2 FLOPs). Attention runs through PyTorch's math SDPA kernel while counting, so it is
counted on every device (the CPU flash kernel has no FLOP formula). The sampler's own gather and
top-k are not FLOPs and are not counted; measure time for those.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .patching.core import _samplers_or_raise, keep_rate, num_patches
from .samplers import keep_count


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    embed = model.patch_embed
    img_size = embed.img_size
    chans = embed.proj.in_channels
    return (chans, int(img_size[0]), int(img_size[1]))


def count_flops(model: nn.Module, keep_rate_value: float = 1.0, *, backward: bool = True,
                batch_size: int = 1) -> int:
    """FLOPs of one forward (and backward, by default) at ``keep_rate_value``, for ``batch_size`` images.

    The model's mode and gradients are left as they were.
    """
    param = next(model.parameters())
    x = torch.randn(batch_size, *_input_size(model), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.train(backward)
    counter = FlopCounterMode(display=False)
    try:
        with keep_rate(model, keep_rate_value), sdpa_kernel(SDPBackend.MATH), counter:
            out = model(x)
            if backward:
                params = [p for p in model.parameters() if p.requires_grad]
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


class FlopModel:
    """FLOPs per image as a function of the keep rate, for one model.

    A ViT's FLOPs are exactly quadratic in the number of tokens (projections and MLPs grow
    linearly, attention quadratically, the patch embedding and head are constant), so three
    counted points determine every other keep count.
    """

    def __init__(self, model: nn.Module, *, backward: bool = True) -> None:
        sampler = _samplers_or_raise(model)[0]
        self.num_patches = num_patches(model)
        self.num_prefix_tokens = sampler.num_prefix_tokens
        self.backward = backward
        counts = sorted({self.num_patches, max(1, self.num_patches // 2), 1})
        if len(counts) < 3:  # tiny grids: count each keep count directly
            counts = list(range(1, self.num_patches + 1))
        flops = [count_flops(model, n / self.num_patches, backward=backward) for n in counts]
        degree = min(2, len(counts) - 1)
        self._coef = np.polyfit(np.array(counts, dtype=np.float64), np.array(flops, dtype=np.float64), degree)

    def flops_at_count(self, num_keep: int) -> float:
        return float(np.polyval(self._coef, num_keep))

    def flops(self, rate: float) -> float:
        """FLOPs per image at keep rate ``rate``."""
        return self.flops_at_count(keep_count(rate, self.num_patches))

    def compute_fraction(self, rates: Sequence[float] | np.ndarray) -> float:
        """Total FLOPs of steps at ``rates`` over the same steps with all patches."""
        values, counts = np.unique(np.asarray(rates, dtype=np.float64), return_counts=True)
        total = sum(self.flops(float(v)) * int(c) for v, c in zip(values, counts))
        return float(total / (self.flops(1.0) * int(counts.sum())))
