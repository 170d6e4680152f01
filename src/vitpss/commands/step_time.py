"""``vitpss step-time``: the measured training-step time of a timm model at each keep rate."""

from __future__ import annotations

import argparse

import timm
import torch

from ..errors import UsageError
from ..models import check_model_name
from ..patching import attach, token_count
from ..runtime import num_threads
from ..schedules import build_schedule
from ..timing import time_training_steps
from .common import parse_rates

DESCRIPTION = """\
Time one training step (forward, backward, AdamW update) of a timm model with patch sampling at
each keep rate, on random inputs on the CPU: the median of --repeats timed steps per rate,
rates interleaved. Also prints the cyclic schedule over a 10-step epoch and its mean keep rate,
to read the times against. For a whole schedule's time and compute, see 'vitpss plan'.
"""
EPILOG = "example: vitpss step-time --model vitpss_tiny_mnist --keep-rates 1,0.5,0.25 --threads 1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("step-time", help="time a timm ViT training step at each keep rate",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per keep rate (default: %(default)s)")
    p.add_argument("--keep-rates", "--rates", dest="keep_rates", type=parse_rates,
                   default=[1.0, 0.8, 0.6, 0.4, 0.2], help="comma-separated keep rates (default 1.0,0.8,...,0.2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.repeats < 1:
        raise UsageError("--batch-size and --repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be >= 1")
    check_model_name(args.model)
    schedule = build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=10, epochs=1)
    print("cyclic(0.2, 1.0) over a 10-step epoch:", [schedule(t) for t in range(10)])
    print(f"mean keep rate {schedule.mean_keep_rate():.3f}")
    torch.manual_seed(0)
    with num_threads(args.threads):
        model = attach(timm.create_model(args.model, num_classes=10), sampler="magnitude")
        rates = args.keep_rates
        times = time_training_steps(model, rates, batch_size=args.batch_size, repeats=args.repeats)
        print(f"{args.model}, batch {args.batch_size}, forward+backward+AdamW on {torch.get_num_threads()} threads")
    print(f"{'keep rate':>9} {'tokens':>6} {'step (ms)':>9} {'vs first':>8}")
    for rate in rates:
        print(f"{rate:>9.2f} {token_count(model, rate):>6d} {times[rate] * 1e3:>9.1f} "
              f"{times[rate] / times[rates[0]]:>8.2f}")
    return 0
