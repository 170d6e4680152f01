"""``vitpss sweep``: dynamic inference, one checkpoint at many keep rates.

For each keep rate: top-1/top-5 accuracy on the validation data, throughput of the model alone
(eval mode, ``no_grad``, one batch already on the device, warm-up first, median of timed passes,
CUDA synchronised, the same batch for every rate; rates interleaved so drift hits all alike), and
GFLOPs per image of the forward (``torch.utils.flop_counter``). Writes ``sweep.json`` (rows
``{keep_rate, acc1, acc5, images_per_s, gflops}``, plus ``tokens`` per image) and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .errors import UsageError
from .flops import count_flops
from .patching import keep_rate, set_sampler, token_count
from .samplers import SAMPLERS
from .timing import _sync

DEFAULT_RATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches, rate: float, *, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` in eval mode at keep ``rate`` over ``batches``.

    ``batches`` is any re-iterable of ``(images, targets)``: an in-memory list or a DataLoader.
    """
    model.eval()
    correct1 = correct5 = total = 0
    with keep_rate(model, rate):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(x)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            total += y.numel()
    if total == 0:
        raise UsageError("the validation data is empty: nothing to evaluate")
    return 100.0 * correct1 / total, 100.0 * correct5 / total


@torch.no_grad()
def throughput(model: nn.Module, x: torch.Tensor, rates: Sequence[float], *, warmup: int = 2,
               repeats: int = 5, amp_dtype: torch.dtype | None = None) -> dict[float, float]:
    """Images per second of the model alone on batch ``x`` (already on the device) at each rate.

    Eval mode and ``no_grad``; ``warmup`` untimed rounds, then ``repeats`` timed rounds, each
    visiting every rate once (round-robin); the result is the median per rate.
    """
    model.eval()
    device = x.device
    times: dict[float, list[float]] = {float(r): [] for r in rates}
    for i in range(warmup + repeats):
        for rate in times:
            with keep_rate(model, rate), _autocast(device, amp_dtype):
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
            if i >= warmup:
                times[rate].append(time.perf_counter() - start)
    return {rate: x.shape[0] / statistics.median(values) for rate, values in times.items()}


def sweep_model(model: nn.Module, batches: Batches, rates: Sequence[float], *,
                timing_batch: torch.Tensor | None = None, warmup: int = 2, repeats: int = 5,
                amp_dtype: torch.dtype | None = None) -> list[dict[str, float]]:
    """One row per keep rate: ``keep_rate, acc1, acc5, images_per_s, gflops, tokens``.

    ``timing_batch`` (default: the images of the first batch) is moved to the model's device
    once and timed at every rate. GFLOPs are per image, forward only.
    """
    device = next(model.parameters()).device
    if timing_batch is None:
        timing_batch = next(iter(batches))[0]
    speed = throughput(model, timing_batch.to(device), rates, warmup=warmup, repeats=repeats,
                       amp_dtype=amp_dtype)
    rows = []
    for rate in speed:
        acc1, acc5 = accuracy(model, batches, rate, device=device, amp_dtype=amp_dtype)
        rows.append({
            "keep_rate": rate,
            "acc1": round(acc1, 3),
            "acc5": round(acc5, 3),
            "images_per_s": round(speed[rate], 1),
            "gflops": round(count_flops(model, rate, backward=False) / 1e9, 6),
            "tokens": token_count(model, rate),
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


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available and ``name`` is None or ``auto``; UsageError for unusable devices."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def load_checkpoint(path: Path, *, data: str | None = None, batch_size: int | None = None,
                    device: str | None = None, sampler: str | None = None) -> LoadedCheckpoint:
    """The model of a ``vitpss train`` checkpoint (file or run directory) and its validation data.

    ``data`` replaces the run's data source (same classes and image size expected); ``sampler``
    the run's sampler; ``batch_size`` the run's batch size.
    """
    from .data import build_datasets, build_loader
    from .train import model_from_checkpoint

    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(path, dev)
    if data is not None:
        cfg = dataclasses.replace(cfg, data=data)
    _, val_ds, num_classes, _, _ = build_datasets(cfg)
    if num_classes != model.num_classes:
        raise UsageError(f"--data {cfg.data} has {num_classes} classes but the checkpoint's model predicts "
                         f"{model.num_classes}: use data with the classes the model was trained on")
    loader = build_loader(val_ds, cfg, train=False, batch_size=batch_size, device=dev)
    sampler = sampler or cfg.sampler
    set_sampler(model, sampler)
    model.eval()
    return LoadedCheckpoint(model, cfg, val_ds, loader, dev, sampler, getattr(val_ds, "classes", None))


def format_table(rows: Sequence[dict[str, float]]) -> str:
    """The sweep as a Markdown table, speed relative to the first row."""
    base = rows[0]["images_per_s"]
    lines = ["| keep rate | tokens | acc1 (%) | acc5 (%) | images/s | speed-up | GFLOPs/image |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['keep_rate']:.2f} | {r.get('tokens', '')} | {r['acc1']:.2f} | {r['acc5']:.2f} "
                     f"| {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {r['gflops']:.4g} |")
    return "\n".join(lines)


def parse_rates(text: str) -> list[float]:
    """``"1.0,0.8,0.5"`` -> ``[1.0, 0.8, 0.5]``; UsageError for anything outside (0, 1]."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"keep rates {text!r} are not numbers: write them like 1.0,0.8,0.6") from None
    bad = [r for r in rates if not 0 < r <= 1]
    if not rates or bad:
        raise UsageError(f"keep rates {text!r}: each must be in (0, 1], e.g. 1.0,0.8,0.6")
    return rates


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="accuracy, throughput and GFLOPs of one checkpoint at many keep rates",
        description="Dynamic inference: evaluate a checkpoint at several keep rates; writes sweep.json "
                    "and sweep.png (default: beside the checkpoint) and prints a table.")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt or best.pt of a run")
    p.add_argument("--keep-rates", type=parse_rates, default=list(DEFAULT_RATES),
                   help="comma-separated keep rates (default 1.0,0.9,...,0.2)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="patch sampler at inference (default: the one the run trained with)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation and timing batch size (default: the run's batch size)")
    p.add_argument("--data", default=None, help="validation data (default: the run's data)")
    p.add_argument("--output", type=Path, default=None, help="directory for sweep.json and sweep.png")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="autocast (bfloat16) for evaluation and timing")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per keep rate (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .plots import plot_sweep

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    loaded = load_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size,
                             device=args.device, sampler=args.sampler)
    model, loader, device = loaded.model, loaded.val_loader, loaded.device
    amp_dtype = torch.bfloat16 if args.amp else None
    rows = sweep_model(model, loader, args.keep_rates, warmup=args.warmup, repeats=args.repeats,
                       amp_dtype=amp_dtype)
    out_dir = args.output or args.checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "sweep.json", rows)
    sampler = loaded.sampler
    batch = next(iter(loader))[0].shape[0]
    where = f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f" ({torch.get_num_threads()} threads)")
    title = f"{args.checkpoint.parent.name}: {sampler} sampler, batch {batch}, {where}"
    plot_sweep([out_dir / "sweep.json"], out_dir / "sweep.png", title=title)
    print(f"{title}, {'bf16 autocast' if args.amp else 'fp32'}; images/s = model only, median of "
          f"{args.repeats} passes")
    print(format_table(rows))
    print(f"wrote {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}")
    return 0
