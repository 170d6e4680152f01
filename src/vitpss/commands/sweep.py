"""``vitpss sweep``: dynamic inference, one checkpoint at many keep rates (see :mod:`vitpss.inference`).

For each keep rate: top-1/top-5 accuracy on the validation data, throughput of the model alone and
GFLOPs per image of the forward. Writes ``sweep.json`` (rows
``{keep_rate, acc1, acc5, images_per_s, gflops}``, plus ``tokens`` per image and the mean ``loss``) and ``sweep.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from ..config import TOKEN_MODES
from .common import add_checkpoint_options, add_common_options, check_common_options, parse_rates

DEFAULT_RATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
def format_table(rows: Sequence[dict[str, float]]) -> str:
    """The sweep as a Markdown table, speed relative to the first row."""
    base = rows[0]["images_per_s"]
    lines = ["| keep rate | tokens | acc1 (%) | acc5 (%) | images/s | speed-up | GFLOPs/image |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['keep_rate']:.2f} | {r.get('tokens', '')} | {r['acc1']:.2f} | {r['acc5']:.2f} "
                     f"| {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {r['gflops']:.4g} |")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        description="Dynamic inference: evaluate a checkpoint at several keep rates; writes sweep.json "
                    "and sweep.png (default: beside the checkpoint) and prints a table. Each row's accuracy is "
                    "what 'vitpss eval --keep-rate' gives at that rate (same seeded draw).")
    add_checkpoint_options(p)
    p.add_argument("--keep-rates", type=parse_rates, default=list(DEFAULT_RATES),
                   help="comma-separated keep rates (default: 1.0,0.9,...,0.2)")
    p.add_argument("--output", type=Path, default=None,
                   help="directory for sweep.json and sweep.png (default: the checkpoint's)")
    p.add_argument("--tokens", choices=list(TOKEN_MODES), default=None,
                   help="how a keep rate gives fewer tokens: sample (drop patches) or resize (a smaller image, all "
                        "of its patches; any timm ViT run) (default: the run's)")
    add_common_options(p, defaults={"device": "auto", "amp": "auto"},
                       shown={"sampler": "the run's; gumbel-magnitude runs use magnitude",
                              "batch_size": "the run's", "workers": "the run's"})
    p.add_argument("--repeats", type=int, default=5, help="timed passes per keep rate, median (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import atomic_write_json, checkpoint_path
    from ..figures import plot_sweep
    from ..inference import load_checkpoint, sweep_model
    from ..runtime import amp_settings

    check_common_options(args)
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    checkpoint = checkpoint_path(args.checkpoint)
    loaded = load_checkpoint(checkpoint, data=args.data, batch_size=args.batch_size, device=args.device,
                             sampler=args.sampler, workers=args.workers, tokens=args.tokens)
    amp_dtype, _ = amp_settings(args.amp, loaded.device)
    rows = sweep_model(loaded.model, loaded.val_loader, args.keep_rates, warmup=args.warmup,
                       repeats=args.repeats, amp_dtype=amp_dtype, seed=loaded.cfg.seed, tokens=loaded.cfg.tokens)
    out_dir = args.output or checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "sweep.json", rows)
    device = loaded.device
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}")
    batch = next(iter(loaded.val_loader))[0].shape[0]
    how = "smaller images" if loaded.cfg.tokens == "resize" else f"{loaded.sampler} sampler"
    title = f"{checkpoint.parent.name}: {how}, batch {batch}, {hardware}"
    plot_sweep([out_dir / "sweep.json"], out_dir / "sweep.png", title=title)
    print(f"{title}, {'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.') + ' autocast'}; images/s: model only, median of "
          f"{args.repeats} timed passes")
    print(format_table(rows))
    print(f"wrote {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}")
    return 0
