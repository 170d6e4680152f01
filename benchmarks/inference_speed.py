"""Model-only inference throughput per keep rate (dynamic inference speed-up).

    python benchmarks/inference_speed.py                     # deit_small, batch 32, CPU
    python benchmarks/inference_speed.py --device cuda --amp # on a GPU

Throughput does not depend on the weights, so an untrained timm model is timed with
`vitpss.inference.throughput` (eval mode, no_grad, batch in memory, rates interleaved, median), the
same measurement `vitpss sweep` makes on a checkpoint. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch

import vitpss
from vitpss.flops import count_flops
from vitpss.inference import throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rates", default="1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2")
    parser.add_argument("--sampler", default="magnitude")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", default="benchmarks/results/inference_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    rates = [float(r) for r in args.rates.split(",")]
    torch.manual_seed(0)
    model = vitpss.attach(timm.create_model(args.model), sampler=args.sampler).to(device)
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)
    with torch.no_grad():
        speed = throughput(model, x, rates, repeats=args.repeats,
                           amp_dtype=torch.bfloat16 if args.amp else None)
    rows = [{"keep_rate": r, "tokens": vitpss.token_count(model, r), "images_per_s": speed[r],
             "speedup": speed[r] / speed[1.0], "gflops": count_flops(model, r, backward=False) / 1e9}
            for r in rates]
    print(f"{args.model}, batch {args.batch_size}, {device.type}, {torch.get_num_threads()} threads, "
          f"sampler {args.sampler}")
    print(f"{'rate':>5}{'tokens':>7}{'img/s':>9}{'speed-up':>9}{'GFLOPs':>8}")
    for r in rows:
        print(f"{r['keep_rate']:>5.1f}{r['tokens']:>7d}{r['images_per_s']:>9.1f}{r['speedup']:>8.2f}x{r['gflops']:>8.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size, "device": args.device,
                               "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
