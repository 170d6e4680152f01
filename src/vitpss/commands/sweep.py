"""``vitpss sweep``: dynamic inference, one checkpoint at many keep rates.

For each keep rate: top-1/top-5 accuracy on the validation data, throughput of the model alone
(eval mode, ``no_grad``, one batch already on the device, warm-up first, median of timed passes,
CUDA synchronised, the same batch for every rate; rates interleaved so drift hits all alike), and
GFLOPs per image of the forward (``torch.utils.flop_counter``). Writes ``sweep.json`` (rows
``{keep_rate, acc1, acc5, images_per_s, gflops}``, plus ``tokens`` per image) and ``sweep.png``.
"""

from __future__ import annotations

import argparse
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

from ..engine import evaluate
from ..errors import UsageError
from ..flops import count_flops
from ..patching import keep_rate, set_sampler, token_count
from ..samplers import SAMPLERS, inference_sampler
from ..timing import sync

DEFAULT_RATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def throughput(model: nn.Module, x: torch.Tensor, rates: Sequence[float], *, warmup: int = 2,
               repeats: int = 5, min_time: float = 0.05,
               amp_dtype: torch.dtype | None = None) -> dict[float, float]:
    """Images per second of the model alone on batch ``x`` (already on the device) at each rate.

    Eval mode and ``no_grad``. ``warmup`` untimed rounds first; then ``repeats`` timed rounds,
    each visiting every rate once (round-robin, so drift hits all rates alike). A timed sample
    runs as many forwards as make the slowest rate last ``min_time`` seconds (as ``timeit``
    does), so that short passes are not lost in timer and scheduler noise. Result: the median.
    """
    model.eval()
    device = x.device

    def timed(rate: float, passes: int) -> float:
        with keep_rate(model, rate), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
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
        result = evaluate(model, batches, device, keep_rate=rate, amp_dtype=amp_dtype)
        rows.append({
            "keep_rate": rate,
            "acc1": round(result["acc1"], 3),
            "acc5": round(result["acc5"], 3),
            "images_per_s": round(speed[rate], 1),
            "gflops": count_flops(model, rate, backward=False) / 1e9,
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


def load_checkpoint(path: Path, *, data: str | None = None, batch_size: int | None = None,
                    device: str | None = None, sampler: str | None = None) -> LoadedCheckpoint:
    """The model of a ``vitpss train`` checkpoint (file or run directory) and its validation data.

    ``data`` replaces the run's data source (same classes and image size expected); ``sampler``
    the run's sampler; ``batch_size`` the run's batch size.
    """
    from ..config import from_dict, validate
    from ..data import build_datasets, build_loader
    from ..trainer import model_from_checkpoint, resolve_device

    dev = resolve_device(device or "auto")
    model, cfg = model_from_checkpoint(path, dev)
    overrides = {k: v for k, v in (("data", data), ("batch_size", batch_size), ("sampler", sampler)) if v is not None}
    cfg = validate(from_dict(overrides, base=cfg, source="command line"))
    _, val_ds, num_classes, _, _ = build_datasets(cfg if data is None else dataclasses.replace(cfg, num_classes=None))
    if num_classes != model.num_classes:
        raise UsageError(f"--data {cfg.data} has {num_classes} classes but the checkpoint's model predicts "
                         f"{model.num_classes}: use data with the classes the model was trained on")
    loader = build_loader(val_ds, cfg, train=False, device=dev)
    set_sampler(model, cfg.sampler)
    model.eval()
    return LoadedCheckpoint(model, cfg, val_ds, loader, dev, inference_sampler(cfg.sampler), getattr(val_ds, "classes", None))


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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="accuracy, throughput and GFLOPs of one checkpoint at many keep rates",
        description="Dynamic inference: evaluate a checkpoint at several keep rates; writes sweep.json "
                    "and sweep.png (default: beside the checkpoint) and prints a table.")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt or best.pt of a run")
    p.add_argument("--keep-rates", type=parse_rates, default=list(DEFAULT_RATES),
                   help="comma-separated keep rates (default 1.0,0.9,...,0.2)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="patch sampler at inference (default: the run's; gumbel-magnitude runs use magnitude)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation and timing batch size (default: the run's batch size)")
    p.add_argument("--data", default=None, help="validation data (default: the run's data)")
    p.add_argument("--output", type=Path, default=None, help="directory for sweep.json and sweep.png")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; on a busy shared CPU, 1 times steadier)")
    p.add_argument("--amp", action="store_true", help="autocast (bfloat16) for evaluation and timing")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per keep rate (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write_json, checkpoint_path
    from ..figures import plot_sweep

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    checkpoint = checkpoint_path(args.checkpoint)
    loaded = load_checkpoint(checkpoint, data=args.data, batch_size=args.batch_size, device=args.device,
                             sampler=args.sampler)
    amp_dtype = torch.bfloat16 if args.amp else None
    rows = sweep_model(loaded.model, loaded.val_loader, args.keep_rates, warmup=args.warmup,
                       repeats=args.repeats, amp_dtype=amp_dtype)
    out_dir = args.output or checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "sweep.json", rows)
    device = loaded.device
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}")
    batch = next(iter(loaded.val_loader))[0].shape[0]
    title = f"{checkpoint.parent.name}: {loaded.sampler} sampler, batch {batch}, {hardware}"
    plot_sweep([out_dir / "sweep.json"], out_dir / "sweep.png", title=title)
    print(f"{title}, {'bf16 autocast' if args.amp else 'fp32'}; images/s: model only, median of "
          f"{args.repeats} timed passes")
    print(format_table(rows))
    print(f"wrote {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}")
    return 0
