"""Patch samplers: which patch tokens to keep.

Pure tensor code, no model knowledge. A sampler takes tokens ``x`` of shape ``(B, N, D)`` whose
first ``num_prefix_tokens`` are class/register tokens (always kept, never scored) and returns
``keep_indices`` of shape ``(B, num_keep)``: per-sample indices into the ``N - num_prefix_tokens``
patch tokens, sorted in spatial order. The same ``num_keep`` applies to every sample, so the batch
stays one dense tensor.

The random samplers (:data:`NOISE_SAMPLERS`) draw uniform noise ``(B, N - num_prefix_tokens)``
with :func:`patch_noise` from ``generator``, or take that noise already drawn as ``noise``: dynamo
cannot trace a draw from a ``torch.Generator``, so a compiled model gets it drawn before the call.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

SamplerFn = Callable[[torch.Tensor, int, int, Optional[torch.Generator]], torch.Tensor]

#: Samplers that take ``noise`` from :func:`patch_noise` (drawn with their generator when not given).
NOISE_SAMPLERS = frozenset({"random", "gumbel-magnitude"})


def keep_count(keep_rate: float, num_patches: int) -> int:
    """Number of patch tokens kept at ``keep_rate``: ``max(1, round(keep_rate * num_patches))``.

    Rounds half-up; prefix tokens are not counted (they are always kept on top).
    """
    if not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate={keep_rate!r} is out of range: keep_rate must be in (0, 1]")
    return max(1, min(num_patches, math.floor(keep_rate * num_patches + 0.5 + 1e-9)))


def patch_noise(batch_size: int, num_patches: int, device: torch.device,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform ``[0, 1)`` noise ``(batch_size, num_patches)`` on ``device``: the draw of the random samplers.

    Drawn on the generator's own device and moved, so a CPU generator keeps working after
    ``model.cuda()`` (the draws are then those of the CPU generator, plus a small copy per step).
    """
    if generator is None or generator.device == device:  # a str device takes the second path, same result
        return torch.rand(batch_size, num_patches, device=device, generator=generator)
    return torch.rand(batch_size, num_patches, device=generator.device, generator=generator).to(device)


def _noise_for(x: torch.Tensor, num_prefix_tokens: int, generator: Optional[torch.Generator],
               noise: Optional[torch.Tensor]) -> torch.Tensor:
    shape = (x.shape[0], x.shape[1] - num_prefix_tokens)
    if noise is None:
        return patch_noise(*shape, device=x.device, generator=generator)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but the tokens need {shape} "
                         f"(batch, patch tokens): draw it with patch_noise(*{shape}, ...)")
    return noise


def random_indices(
    x: torch.Tensor,
    num_prefix_tokens: int,
    num_keep: int,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A uniformly random subset of ``num_keep`` patches per sample: ``(B, num_keep)``.

    The ``num_keep`` patches with the largest ``noise`` (drawn with ``generator`` when not given).
    """
    noise = _noise_for(x, num_prefix_tokens, generator, noise)
    return noise.topk(num_keep, dim=1, sorted=False).indices.sort(dim=1).values


def magnitude_indices(
    x: torch.Tensor,
    num_prefix_tokens: int,
    num_keep: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The ``num_keep`` patches with the largest L1 norm per sample (deterministic top-k).

    As published, the score is the token after patch embedding and position embedding; it is
    not differentiated through (gradients reach only the kept tokens). ``generator`` is unused.
    """
    with torch.no_grad():
        scores = x[:, num_prefix_tokens:].detach().abs().sum(dim=-1)
        return scores.topk(num_keep, dim=1, sorted=False).indices.sort(dim=1).values


def gumbel_magnitude_indices(
    x: torch.Tensor,
    num_prefix_tokens: int,
    num_keep: int,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A random subset that favours large-L1-norm patches (not part of the paper).

    Gumbel top-k: samples ``num_keep`` patches without replacement with probabilities
    ``softmax(z)``, where ``z`` is the per-image standardised L1 norm. Unlike ``magnitude`` the
    model sees every patch sometimes, so it does not learn only the highest-norm patches. In eval
    mode :class:`vitpss.PatchSampler` uses the deterministic top-k (``magnitude``) instead. The
    Gumbel noise is computed from uniform ``noise`` (drawn with ``generator`` when not given).
    """
    with torch.no_grad():
        scores = x[:, num_prefix_tokens:].abs().sum(dim=-1).float()
        z = (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True, correction=0) + 1e-6)
        uniform = _noise_for(x, num_prefix_tokens, generator, noise).clamp(1e-9, 1.0)
        gumbel = -torch.log(-torch.log(uniform))
        return (z + gumbel).topk(num_keep, dim=1, sorted=False).indices.sort(dim=1).values


SAMPLERS: dict[str, SamplerFn] = {
    "random": random_indices,
    "magnitude": magnitude_indices,
    "gumbel-magnitude": gumbel_magnitude_indices,
}


# Samplers that are random in training but should be deterministic at inference (like dropout):
# a model trained with Gumbel top-k over the norms is evaluated with the plain top-k.
INFERENCE_SAMPLERS: dict[str, str] = {"gumbel-magnitude": "magnitude"}


def inference_sampler(name: str) -> str:
    """The sampler used in eval mode for a model that trains with ``name``."""
    return INFERENCE_SAMPLERS.get(name, name)


def get_sampler(name: str) -> SamplerFn:
    """The sampler function registered as ``name``; ``ValueError`` listing valid names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}") from None


def gather_tokens(x: torch.Tensor, num_prefix_tokens: int, keep_indices: torch.Tensor) -> torch.Tensor:
    """Prefix tokens followed by the kept patch tokens: ``(B, num_prefix_tokens + num_keep, D)``."""
    patches = x[:, num_prefix_tokens:]
    index = keep_indices.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    kept = patches.gather(1, index)
    if num_prefix_tokens == 0:
        return kept
    return torch.cat((x[:, :num_prefix_tokens], kept), dim=1)
