"""``vitpss step-time``: a schedule and the measured training-step time at each keep rate."""

from __future__ import annotations

import argparse

import timm
import torch

from ..patching import attach, token_count
from ..schedules import build_schedule
from ..timing import time_training_steps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("step-time", help="time a timm ViT training step at each keep rate")
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rates", default="1.0,0.8,0.6,0.4,0.2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    schedule = build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=10, epochs=1)
    print("cyclic(0.2, 1.0) over a 10-step epoch:", [schedule(t) for t in range(10)])
    print(f"mean keep rate {schedule.mean_keep_rate():.3f}")
    torch.manual_seed(0)
    model = attach(timm.create_model(args.model, num_classes=10), sampler="magnitude")
    rates = [float(r) for r in args.rates.split(",")]
    times = time_training_steps(model, rates, batch_size=args.batch_size, repeats=args.repeats)
    print(f"{args.model}, batch {args.batch_size}, forward+backward+AdamW on {torch.get_num_threads()} threads")
    print(f"{'keep rate':>9} {'tokens':>6} {'step (ms)':>9} {'vs 1.0':>6}")
    for rate in rates:
        print(f"{rate:>9.2f} {token_count(model, rate):>6d} {times[rate] * 1e3:>9.1f} {times[rate] / times[rates[0]]:>6.2f}")
    return 0
