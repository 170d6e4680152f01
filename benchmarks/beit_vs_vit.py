"""Training-step time of a BEiT (relative position bias, gathered per sample) vs a plain ViT of the same size.

    python benchmarks/beit_vs_vit.py                          # base dims, 224 px, batch 8, CPU
    python benchmarks/beit_vs_vit.py --device cuda --batch-size 64

Both models get ``vitpss.attach(sampler="random")``. One full step (forward, backward, AdamW) per
(model, keep rate) in round-robin, first round discarded; medians of wall-clock time and, on CPU,
of process CPU time (less sensitive to other processes on a shared machine). Report the ratios.
Writes JSON (default benchmarks/results/beit_vs_vit.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

import vitpss


def step_times(models: dict[str, torch.nn.Module], rates: list[float], batch_size: int, rounds: int,
               device: torch.device) -> dict[str, dict[tuple[str, float], float]]:
    """Median wall and CPU seconds of one training step per (model, rate)."""
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-6) for n, m in models.items()}
    first = next(iter(models.values()))
    x = torch.randn(batch_size, 3, *first.patch_embed.img_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    wall = {(n, r): [] for n in models for r in rates}
    cpu = {k: [] for k in wall}
    for i in range(rounds + 1):
        for name, rate in wall:
            model = models[name].train()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            with vitpss.keep_rate(model, rate):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # round 0 warms up
                wall[(name, rate)].append(time.perf_counter() - w0)
                cpu[(name, rate)].append(time.process_time() - c0)
    return {"wall": {k: statistics.median(v) for k, v in wall.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", default="vit_base_patch16_224")
    parser.add_argument("--beit", default="beit_base_patch16_224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/beit_vs_vit.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {n: vitpss.attach(timm.create_model(n, num_classes=10), sampler="random").to(device)
              for n in (args.vit, args.beit)}
    times = step_times(models, [1.0, 0.5], args.batch_size, args.rounds, device)
    result = {"machine": platform.processor() or platform.machine(), "device": str(device), "torch": torch.__version__,
              "batch_size": args.batch_size, "rounds": args.rounds}
    for clock, med in times.items():
        v, b = (lambda r, n=n: med[(n, r)] for n in (args.vit, args.beit))
        result[clock] = {"vit@1": v(1.0), "vit@0.5": v(0.5), "beit@1": b(1.0), "beit@0.5": b(0.5),
                         "beit/vit@1": b(1.0) / v(1.0), "beit/vit@0.5": b(0.5) / v(0.5),
                         "beit@0.5/beit@1": b(0.5) / b(1.0), "vit@0.5/vit@1": v(0.5) / v(1.0)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
