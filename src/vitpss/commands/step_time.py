"""``vitpss step-time``: the measured training-step time of a timm model at each keep rate."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import add_common_options, check_common_options, parse_rates

DESCRIPTION = """\
Time one training step (forward, backward, AdamW update) of a timm model with patch sampling at
each keep rate, on random inputs (on the CPU unless --device says otherwise): the median of --repeats timed steps per rate,
rates interleaved. Also prints the cyclic schedule over a 10-step epoch and its mean keep rate,
to read the times against. For a whole schedule's time and compute, see 'vitpss plan'.
"""
EPILOG = "example: vitpss step-time --model vitpss_tiny_mnist --keep-rates 1,0.5,0.25 --threads 1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("step-time", description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per keep rate (default: %(default)s)")
    p.add_argument("--keep-rates", "--rates", dest="keep_rates", type=parse_rates,
                   default=[1.0, 0.8, 0.6, 0.4, 0.2], help="comma-separated keep rates (default: 1.0,0.8,...,0.2)")
    add_common_options(p, ("threads", "device", "amp", "sampler", "batch_size"),
                       defaults={"device": "cpu", "amp": "auto", "sampler": "magnitude", "batch_size": 8})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import timm
    import torch

    from ..models import check_model_name
    from ..patching import attach, token_count
    from ..runtime import amp_settings, num_threads, resolve_device
    from ..schedules import build_schedule
    from ..timing import time_training_steps

    check_common_options(args)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    check_model_name(args.model)
    device = resolve_device(args.device)
    amp_dtype, _ = amp_settings(args.amp, device)
    schedule = build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=10, epochs=1)
    print("cyclic(0.2, 1.0) over a 10-step epoch:", [schedule(t) for t in range(10)])
    print(f"mean keep rate {schedule.mean_keep_rate():.3f}")
    torch.manual_seed(0)
    with num_threads(args.threads):
        model = attach(timm.create_model(args.model, num_classes=10), sampler=args.sampler).to(device)
        rates = args.keep_rates
        times = time_training_steps(model, rates, batch_size=args.batch_size, repeats=args.repeats,
                                    amp_dtype=amp_dtype)
        where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
        print(f"{args.model}, batch {args.batch_size}, {args.sampler} sampler, forward+backward+AdamW on {where}")
    print(f"{'keep rate':>9} {'tokens':>6} {'step (ms)':>9} {'vs first':>8}")
    for rate in rates:
        print(f"{rate:>9.2f} {token_count(model, rate):>6d} {times[rate] * 1e3:>9.1f} "
              f"{times[rate] / times[rates[0]]:>8.2f}")
    return 0
