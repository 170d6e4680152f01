"""Dynamic inference: a trained model at many keep rates (accuracy, throughput, GFLOPs), and loading it.

:func:`throughput` times the model alone (eval mode, ``no_grad``, one batch already on the device,
warm-up first, median of timed passes, CUDA synchronised, the same batch for every rate; rates
interleaved so drift hits all alike); :func:`sweep_model` adds accuracy and forward GFLOPs per image
(``torch.utils.flop_counter``). ``vitpss sweep`` is its command line.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .config import from_dict, validate
from .data import build_datasets, build_loader
from .engine import evaluate
from .errors import UsageError
from .flops import count_flops
from .models import model_from_checkpoint
from .patching import keep_rate, patch_samplers, set_sampler, token_count
from .resolution import check_token_mode, equivalent_keep_rates, resized_inputs
from .runtime import resolve_device
from .samplers import inference_sampler
from .timing import sync

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def throughput(model: nn.Module, x: torch.Tensor, rates: Sequence[float], *, warmup: int = 2,
               repeats: int = 5, min_time: float = 0.05,
               amp_dtype: torch.dtype | None = None, tokens: str = "sample") -> dict[float, float]:
    """Images per second of the model alone on batch ``x`` (already on the device) at each rate.

    Eval mode and ``no_grad``. ``warmup`` untimed rounds first; then ``repeats`` timed rounds,
    each visiting every rate once (round-robin, so drift hits all rates alike). A timed sample
    runs as many forwards as make the slowest rate last ``min_time`` seconds (as ``timeit``
    does), so that short passes are not lost in timer and scheduler noise. Result: the median.
    ``tokens="resize"`` runs each rate as a smaller image (the resize is timed too).
    """
    model.eval()
    device = x.device

    def timed(rate: float, passes: int) -> float:
        with rate_context(model, rate, tokens), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            sync(device)
            start = time.perf_counter()
            for _ in range(passes):
                model(x)
            sync(device)
        return (time.perf_counter() - start) / passes

    for _ in range(warmup):
        slowest = max(timed(float(rate), 1) for rate in rates)
    passes = max(1, math.ceil(min_time / slowest)) if warmup else 1
    times: dict[float, list[float]] = {float(r): [] for r in rates}
    for _ in range(repeats):
        for rate in times:
            times[rate].append(timed(rate, passes))
    return {rate: x.shape[0] / statistics.median(values) for rate, values in times.items()}


def rate_context(model: nn.Module, rate: float, tokens: str = "sample"):
    """The model at keep ``rate``: patches sampled (:func:`vitpss.keep_rate`) or a smaller image
    (:func:`vitpss.resolution.resized_inputs`, all patches of it)."""
    if check_token_mode(tokens) == "resize":
        return resized_inputs(model, rate)
    return keep_rate(model, rate)


def evaluate_at(model: nn.Module, batches: Batches, rate: float | None, *, seed: int = 0,
                amp_dtype: torch.dtype | None = None, tokens: str = "sample") -> dict[str, float]:
    """:func:`~vitpss.engine.evaluate` at keep rate ``rate`` with the random samplers' draw seeded.

    Every sampler generator restarts from ``seed`` first, so the draw at a rate depends on the
    checkpoint, data, batch size and seed only, not on what ran before: ``vitpss eval`` at ρ and
    ``vitpss sweep``'s row for ρ give the same number. ``tokens="resize"``: the rate as a smaller
    image (all of its patches).
    """
    for module in patch_samplers(model):
        if module.generator is not None:
            module.generator.manual_seed(seed)
    device = next(model.parameters()).device
    if rate is not None and check_token_mode(tokens) == "resize":
        with resized_inputs(model, rate):
            return evaluate(model, batches, device, amp_dtype=amp_dtype)
    return evaluate(model, batches, device, keep_rate=rate, amp_dtype=amp_dtype)


def sweep_model(model: nn.Module, batches: Batches, rates: Sequence[float], *,
                timing_batch: torch.Tensor | None = None, warmup: int = 2, repeats: int = 5,
                amp_dtype: torch.dtype | None = None, seed: int = 0,
                tokens: str = "sample") -> list[dict[str, float]]:
    """One row per keep rate: ``keep_rate, acc1, acc5, loss, images_per_s, gflops, tokens``.

    ``timing_batch`` (default: the images of the first batch) is moved to the model's device
    once and timed at every rate. GFLOPs are per image, forward only. Accuracy as
    :func:`evaluate_at` with ``seed``; ``tokens="resize"`` evaluates each rate as a smaller image
    instead of sampled patches.
    """
    device = next(model.parameters()).device
    if timing_batch is None:
        timing_batch = next(iter(batches))[0]
    speed = throughput(model, timing_batch.to(device), rates, warmup=warmup, repeats=repeats,
                       amp_dtype=amp_dtype, tokens=tokens)
    resize = tokens == "resize"
    rows = []
    for rate in speed:
        result = evaluate_at(model, batches, rate, seed=seed, amp_dtype=amp_dtype, tokens=tokens)
        equivalent = (float(equivalent_keep_rates([rate], model.patch_embed.grid_size)[0]) if resize else rate)
        rows.append({
            "keep_rate": rate,
            "acc1": round(result["acc1"], 3),
            "acc5": round(result["acc5"], 3),
            "loss": round(result["loss"], 4),
            "images_per_s": round(speed[rate], 1),
            "gflops": count_flops(model, equivalent, backward=False) / 1e9,
            "tokens": token_count(model, equivalent),
        })
    return rows


@dataclass
class LoadedCheckpoint:
    """A trained model in eval mode with its run's validation data."""

    model: nn.Module
    cfg: Any
    val_dataset: Dataset
    val_loader: Iterable
    device: torch.device
    sampler: str
    class_names: list[str] | None

    def sample_images(self, n: int) -> tuple[torch.Tensor, list[int], np.ndarray]:
        """``n`` evenly spaced validation images: (inputs on the device, targets, display images).

        Display images are ``(n, H, W, C)`` in [0, 1]: the inputs with the transform's
        normalisation undone (or each image min-max scaled when there is none).
        """
        indices = np.linspace(0, len(self.val_dataset) - 1, min(n, len(self.val_dataset))).round().astype(int)
        samples = [self.val_dataset[int(i)] for i in indices]
        inputs = torch.stack([x for x, _ in samples])
        return inputs.to(self.device), [int(y) for _, y in samples], display_images(inputs, self.val_dataset)


def display_images(inputs: torch.Tensor, dataset: Dataset) -> np.ndarray:
    """Normalised ``(B, C, H, W)`` inputs back to viewable ``(B, H, W, C)`` images in [0, 1]."""
    from torchvision.transforms import Normalize

    transform = getattr(dataset, "transform", None)
    norm = next((t for t in getattr(transform, "transforms", []) if isinstance(t, Normalize)), None)
    x = inputs.detach().float().cpu()
    if norm is not None:
        mean = torch.as_tensor(norm.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.as_tensor(norm.std, dtype=x.dtype).view(1, -1, 1, 1)
        x = x * std + mean
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def load_checkpoint(path: Path, *, data: str | None = None, batch_size: int | None = None,
                    device: str | None = None, sampler: str | None = None, workers: int | None = None,
                    ema: bool = False, tokens: str | None = None) -> LoadedCheckpoint:
    """The model of a ``vitpss train`` checkpoint (file or run directory) and its validation data.

    ``data`` replaces the run's data source (same classes and image size expected); ``sampler``
    the run's sampler; ``batch_size`` the run's batch size; ``workers`` its loader workers;
    ``ema=True`` loads the EMA weights; ``tokens="resize"`` builds the model so that it reads
    smaller images (any run of a timm ViT). Only the validation split is read.
    """
    dev = resolve_device(device or "auto")
    model, cfg = model_from_checkpoint(path, dev, ema=ema, tokens=tokens)
    overrides = {k: v for k, v in (("data", data), ("batch_size", batch_size), ("sampler", sampler),
                                   ("workers", workers)) if v is not None}
    cfg = validate(from_dict(overrides, base=cfg, source="command line"))
    _, val_ds, num_classes, _, _ = build_datasets(cfg if data is None else dataclasses.replace(cfg, num_classes=None),
                                                  with_train=False)
    if num_classes != model.num_classes:
        raise UsageError(f"--data {cfg.data} has {num_classes} classes but the checkpoint's model predicts "
                         f"{model.num_classes}: use data with the classes the model was trained on")
    loader = build_loader(val_ds, cfg, train=False, device=dev)
    set_sampler(model, cfg.sampler)
    model.eval()
    return LoadedCheckpoint(model, cfg, val_ds, loader, dev, inference_sampler(cfg.sampler), getattr(val_ds, "classes", None))
