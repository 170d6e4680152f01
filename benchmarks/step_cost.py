"""Cost of one training step per keep rate: FLOPs, median wall time, memory, sampler share.

    python benchmarks/step_cost.py                       # deit_tiny + deit_small, batch 32, CPU
    python benchmarks/step_cost.py --device cuda --amp   # on a GPU

Rates are interleaved within one run (round-robin), so machine noise hits every rate alike; report
the ratios. Memory: on CUDA the peak allocated memory of the step; on CPU the bytes of activations
saved for backward (what grows with the token count), measured with saved-tensor hooks.
Writes JSON (default benchmarks/results/step_cost.json).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import timm
import torch

import vitpss
from vitpss.flops import FlopModel
from vitpss.timing import time_sampler, time_training_steps


def saved_activation_bytes(model: torch.nn.Module, rate: float, batch_size: int, device: torch.device) -> int:
    """Bytes of tensors autograd saves for backward during one training forward at ``rate``."""
    total = 0
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights are not activations

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    x = torch.randn(batch_size, 3, 224, 224, device=device)
    model.train()
    with vitpss.keep_rate(model, rate), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


def cuda_peak_bytes(model: torch.nn.Module, rate: float, batch_size: int, device: torch.device, amp: bool) -> int:
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with vitpss.keep_rate(model, rate), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated(device) - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deit_tiny_patch16_224,deit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rates", default="1.0,0.8,0.6,0.4,0.2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", default="benchmarks/results/step_cost.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    rates = [float(r) for r in args.rates.split(",")]
    amp_dtype = torch.bfloat16 if args.amp else None
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = vitpss.attach(timm.create_model(name, num_classes=1000), sampler="magnitude").to(device)
        flop_model = FlopModel(model)
        times = time_training_steps(model, rates, batch_size=args.batch_size, repeats=args.repeats,
                                    amp_dtype=amp_dtype)
        for rate in rates:
            memory = (cuda_peak_bytes(model, rate, args.batch_size, device, args.amp) if device.type == "cuda"
                      else saved_activation_bytes(model, rate, args.batch_size, device))
            samplers = {s: time_sampler(model, s, rate, batch_size=args.batch_size) if rate < 1 else 0.0
                        for s in vitpss.SAMPLERS}
            rows.append({
                "model": name, "keep_rate": rate, "tokens": vitpss.token_count(model, rate),
                "gflops_step": flop_model.flops(rate) * args.batch_size / 1e9,
                "step_ms": times[rate] * 1e3, "time_vs_full": times[rate] / times[1.0],
                "flops_vs_full": flop_model.flops(rate) / flop_model.flops(1.0),
                "memory_mb": memory / 2**20,
                "sampler_ms": {s: t * 1e3 for s, t in samplers.items()},
                "sampler_share": {s: t / times[rate] for s, t in samplers.items()},
            })

    print(f"batch {args.batch_size}, {device.type}{' bf16' if args.amp else ''}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<24}{'rate':>5}{'tokens':>7}{'GFLOP':>8}{'ms':>9}{'t/t1':>6}{'F/F1':>6}{'MB':>8}  "
          + "  ".join(f"{s} %" for s in vitpss.SAMPLERS))
    for r in rows:
        print(f"{r['model']:<24}{r['keep_rate']:>5.1f}{r['tokens']:>7d}{r['gflops_step']:>8.1f}{r['step_ms']:>9.1f}"
              f"{r['time_vs_full']:>6.2f}{r['flops_vs_full']:>6.2f}{r['memory_mb']:>8.0f}  "
              + "  ".join(f"{100 * r['sampler_share'][s]:>{len(s) + 2}.2f}" for s in vitpss.SAMPLERS))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "device": str(device),
            "torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "amp": args.amp, "repeats": args.repeats}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
