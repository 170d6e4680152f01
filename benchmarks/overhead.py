"""Fixed per-step costs of small-model training: the optimizer step and loading a batch, old vs new.

    python benchmarks/overhead.py                          # default MNIST model, batch 32, 1 thread
    python benchmarks/overhead.py --patch-size 4 --embed-dim 128

Fixed costs do not shrink with the keep rate, so they cap what PSS can save. Measured side by side
in one process (alternated, median of --repeats):
- optimizer: torch's default AdamW on CPU (one parameter at a time) vs ``vitpss.optim.create_adamw``
  (timm's parameter groups, fused kernel), one ``step()`` with gradients present;
- loading: one epoch of the mnist5k training loader per batch with ``--augment light``, timm's
  per-image Pillow transform vs vitpss's batched crop (``BatchRandomResizedCrop``);
- the full training step (forward, backward, fused AdamW) per grid keep rate (``--rates``), rates
  interleaved: what the step itself saves at each rate, for scale.
Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

import vitpss
from vitpss.config import TrainConfig
from vitpss.data import TransformedDataset, build_datasets, build_loader, build_transform
from vitpss.optim import create_adamw
from vitpss.timing import time_training_steps
from vitpss.models import vitpss_tiny_mnist


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def loader_ms_per_batch(loader, epoch: int) -> float:
    loader.sampler.set_epoch(epoch)
    start, batches = time.perf_counter(), 0
    for _ in loader:
        batches += 1
    return (time.perf_counter() - start) / batches * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rates", default="1.0,0.8,0.6,0.4,0.2", help="keep rates of the step timing")
    parser.add_argument("--json", default="benchmarks/results/overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vitpss.attach(vitpss_tiny_mnist(patch_size=args.patch_size, embed_dim=args.embed_dim),
                          sampler="gumbel-magnitude")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {"torch AdamW (per parameter)": create_optimizer_v2(model, "adamw", lr=1e-9, weight_decay=0.05),
                  "vitpss create_adamw (fused)": create_adamw(model, lr=1e-9, weight_decay=0.05)}

    cfg = TrainConfig(batch_size=args.batch_size, augment="light", patch_size=args.patch_size)
    batched, _, _, in_chans, img_size = build_datasets(cfg)
    per_image = TransformedDataset(batched.source, build_transform(cfg, True, img_size, in_chans), batched.classes)
    loaders = {"timm per-image transform": build_loader(per_image, cfg, True),
               "vitpss batched crop": build_loader(batched, cfg, True)}
    loader_ms_per_batch(loaders["vitpss batched crop"], 0)  # fills the cache of normalised digits

    samples: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name, opt in optimizers.items():
            samples.setdefault(name, []).append(per_call_ms(opt.step, 50))
        for name, loader in loaders.items():
            samples.setdefault(name, []).append(loader_ms_per_batch(loader, repeat + 1))
    rates = [float(r) for r in args.rates.split(",")]
    step = time_training_steps(model, rates, batch_size=args.batch_size, repeats=args.repeats * 4)
    rows = {name: statistics.median(values) for name, values in samples.items()}
    rows.update({f"training step at keep rate {r}": seconds * 1e3 for r, seconds in step.items()})

    print(f"vitpss_tiny_mnist patch {args.patch_size} width {args.embed_dim}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    for name, ms in rows.items():
        print(f"  {name:<36}{ms:>9.2f} ms")
    names = list(rows)
    print(f"  optimizer speed-up {rows[names[0]] / rows[names[1]]:.1f}x, loading speed-up "
          f"{rows[names[2]] / rows[names[3]]:.1f}x")
    if max(step) == 1.0:
        print("  step time vs keep rate 1.0: " + ", ".join(f"{r}: {t / step[1.0]:.2f}" for r, t in step.items()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}",
                               "args": vars(args), "ms": rows,
                               "step_vs_full": {str(r): t / step[max(step)] for r, t in step.items()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
