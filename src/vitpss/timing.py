"""Wall-clock timing of training steps and samplers at several keep rates.

Rates are interleaved (round-robin) so that drift on a shared machine hits every rate alike, and
each result is the median of the timed repeats after warm-up. CUDA work is synchronised.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .optim import create_adamw
from .patching.core import _samplers_or_raise, keep_rate
from .resolution import check_token_mode, model_patch_size, resize_to_rate
from .samplers import gather_tokens, get_sampler, keep_count


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input_batch(model: nn.Module, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    param = next(model.parameters())
    embed = model.patch_embed
    x = torch.randn(batch_size, embed.proj.in_channels, *embed.img_size, device=param.device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=param.device)
    return x, y


def time_training_steps(
    model: nn.Module,
    rates: Sequence[float],
    *,
    batch_size: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    amp_dtype: torch.dtype | None = None,
    tokens: str = "sample",
) -> dict[float, float]:
    """Median seconds of one full training step (forward, backward, AdamW step) per keep rate.

    ``tokens="resize"`` realises each rate as a smaller image (:mod:`vitpss.resolution`; the resize
    is timed with the step). Uses a throw-away AdamW over the model's parameters; the model's
    weights change.
    """
    device = next(model.parameters()).device
    x, y = _input_batch(model, batch_size)
    optimizer = create_adamw(model, lr=1e-6, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    resize = check_token_mode(tokens) == "resize"
    times: dict[float, list[float]] = {float(r): [] for r in rates}
    for i in range(warmup + repeats):
        for rate in times:
            sync(device)
            start = time.perf_counter()
            images = resize_to_rate(x, rate, model_patch_size(model)) if resize else x
            with keep_rate(model, 1.0 if resize else rate), \
                    torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(images), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times[rate].append(time.perf_counter() - start)
    return {rate: statistics.median(values) for rate, values in times.items()}


def time_sampler(
    model: nn.Module,
    sampler: str,
    rate: float,
    *,
    batch_size: int = 32,
    repeats: int = 50,
) -> float:
    """Median seconds for ``sampler`` to choose and gather tokens for one batch of this model."""
    device = next(model.parameters()).device
    num_prefix = _samplers_or_raise(model)[0].num_prefix_tokens
    fn = get_sampler(sampler)
    x, _ = _input_batch(model, batch_size)
    with torch.no_grad():
        tokens = model._pos_embed(model.patch_embed(x))
    tokens.requires_grad_(True)  # as in training: the gather is part of the autograd graph
    num_keep = keep_count(rate, tokens.shape[1] - num_prefix)
    samples = []
    for i in range(repeats + 5):
        sync(device)
        start = time.perf_counter()
        gather_tokens(tokens, num_prefix, fn(tokens, num_prefix, num_keep, None))
        sync(device)
        if i >= 5:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_vs_all_patches(records: Sequence[Mapping[str, Any]], min_steps: int = 5) -> dict[str, float]:
    """How a run's training time compares with the same steps at all patches, from its own step log.

    ``records`` are ``train_log.jsonl`` rows (``keep_rate``, ``step_time``). Each keep rate's
    median step time, weighted by its number of steps, over the median step time at keep rate 1
    times all steps: medians, so that a few steps slowed by other load on the machine do not count.
    Returns ``{"time_vs_all_patches", "full_step_time_s", "full_steps"}``, or ``{}`` when fewer than
    ``min_steps`` steps ran at keep rate 1 (nothing to compare with) or all of them did.
    """
    by_rate: dict[float, list[float]] = {}
    for r in records:
        by_rate.setdefault(float(r["keep_rate"]), []).append(float(r["step_time"]))
    full = by_rate.get(1.0, [])
    if len(full) < min_steps or len(full) == len(records):
        return {}
    full_median = statistics.median(full)
    pss = sum(len(times) * statistics.median(times) for times in by_rate.values())
    return {"time_vs_all_patches": pss / (len(records) * full_median), "full_step_time_s": full_median,
            "full_steps": len(full)}
