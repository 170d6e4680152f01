"""Peak memory and time of one BEiT training step vs the plain ViT of the same size, per keep rate.

    python benchmarks/beit_memory.py                      # ViT-B vs BEiT-B, batch 32, CPU, 1 thread
    python benchmarks/beit_memory.py --device cuda --amp  # on a GPU (bf16 autocast)
    python benchmarks/beit_memory.py --embed-dim 384 --num-heads 6   # ViT-S size

BEiT is measured with vitpss's bias lookup and with the previous path (``materialize``: a
``(B, H, n, n)`` bias gathered per block, stock LayerScale); ``--bias lookup`` measures one.

Each (model, keep rate) is measured in a fresh subprocess: build, one untimed step (allocates the
optimizer state), ``--steps`` timed steps (median wall and process-CPU seconds), then one step for
memory (its activations, gradients and temporaries): on CPU the growth of the peak RSS (VmHWM,
reset through /proc/self/clear_refs), with glibc switched to returning every freed block of
64 KiB or more to the system first (mallopt, malloc_trim) so that RSS follows the live tensors;
on CUDA ``max_memory_allocated`` over the memory before the step. Prints a table, writes JSON (default
benchmarks/results/beit_memory.json).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RATES = (1.0, 0.8, 0.5, 0.2)
LOOKUP_ATTENTION = None  # vitpss's rel_pos_attention, kept when a model switches to the previous path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(args: argparse.Namespace) -> dict:
    """One (model, rate): peak memory growth and times of one training step (child process)."""
    import timm
    import torch

    import vitpss
    from vitpss.patching import relpos as patching_relpos

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dims = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth), ("num_heads", args.num_heads))
            if v is not None}
    model = timm.create_model(args.model, num_classes=10, **dims)
    model = vitpss.attach(model, sampler="random").to(device).train()
    if args.bias == "materialize":
        use_materialized_bias(model, patching_relpos)
    vitpss.set_keep_rate(model, args.rate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randn(args.batch_size, 3, *model.patch_embed.img_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    step()
    wall, cpu = [], []
    for _ in range(args.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        return_freed_memory_to_the_system()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _status_kib("VmRSS") * 1024
    step()
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _status_kib("VmHWM") * 1024) - base
    return {"peak_bytes": peak, "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def return_freed_memory_to_the_system() -> None:
    """From now on glibc serves every block >= 64 KiB by mmap and unmaps it when freed, so RSS
    follows the live tensors; what it holds free now is handed back (malloc_trim)."""
    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 65536)
    libc.malloc_trim(0)


def materialized_attention(q, k, v, table, pair_index, scale=None):
    """The previous BEiT attention: a ``(B, H, n, n)`` bias by advanced indexing, as ``attn_mask``."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, attn_mask=table.t()[:, pair_index].transpose(0, 1), scale=scale)


def use_materialized_bias(model, patching_relpos) -> None:
    """The previous BEiT path: gather a ``(B, H, n, n)`` bias per block, stock LayerScale."""
    patching_relpos.rel_pos_attention = materialized_attention
    for block in getattr(model, "blocks", []):
        block.__dict__.pop("forward", None)  # the class's forward: gamma * f(x)


def interleaved_times(args: argparse.Namespace) -> dict:
    """Step times of ViT and each BEiT path in one process, round-robin (drift hits all alike)."""
    import timm
    import torch

    import vitpss
    from vitpss.patching import relpos as patching_relpos

    torch.set_num_threads(args.threads)
    dims = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth), ("num_heads", args.num_heads))
            if v is not None}
    variants = {"vit": (args.vit, "lookup")} | {f"beit_{b}": (args.beit, b) for b in args.bias}
    models, optimizers = {}, {}
    for key, (name, bias) in variants.items():
        torch.manual_seed(0)
        models[key] = vitpss.attach(timm.create_model(name, num_classes=10, **dims), sampler="random").train()
        optimizers[key] = torch.optim.AdamW(models[key].parameters(), lr=1e-6)
    for bias in args.bias:  # the materialising path replaces a module function: build its model last
        if bias == "materialize":
            use_materialized_bias(models["beit_materialize"], patching_relpos)
    x = torch.randn(args.batch_size, 3, 224, 224)
    y = torch.randint(0, 10, (args.batch_size,))
    cpu = {(k, r): [] for r in args.rates for k in models}
    for i in range(args.interleaved + 1):
        for key, rate in cpu:
            patching_relpos.rel_pos_attention = (materialized_attention if key == "beit_materialize"
                                                 else LOOKUP_ATTENTION)
            vitpss.set_keep_rate(models[key], rate)
            c0 = time.process_time()
            torch.nn.functional.cross_entropy(models[key](x), y).backward()
            optimizers[key].step()
            optimizers[key].zero_grad(set_to_none=True)
            if i:  # round 0 warms up
                cpu[(key, rate)].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return {str(r): {**{f"{k}_cpu_s": med[(k, r)] for k in models},
                     **{f"{k}/vit": med[(k, r)] / med[("vit", r)] for k in models if k != "vit"}} for r in args.rates}


def run_child(args: argparse.Namespace, model: str, rate: float, bias: str) -> dict:
    """Memory and times of ``model`` at ``rate``, from a fresh process."""
    cmd = [sys.executable, __file__, "--model", model, "--rate", str(rate), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device, "--bias", bias]
    cmd += ["--amp"] if args.amp else []
    for name in ("embed_dim", "depth", "num_heads"):
        if getattr(args, name) is not None:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    done = subprocess.run(cmd + ["--child"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{model} at keep rate {rate} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", default="vit_base_patch16_224")
    parser.add_argument("--beit", default="beit_base_patch16_224")
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, help="override both models' width (e.g. 384 for ViT-S size)")
    parser.add_argument("--depth", type=int, help="override both models' depth")
    parser.add_argument("--num-heads", type=int, help="override both models' heads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--bias", choices=("lookup", "materialize"), nargs="+", default=["lookup", "materialize"],
                        help="BEiT attention paths to measure: vitpss's bias lookup and/or the previous per-sample bias")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/beit_memory.json"))
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="instead: CPU times only, all models in one process, round-robin over ROUNDS rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.bias = args.bias[0]
        print(json.dumps(measure(args)))
        return
    if args.interleaved:
        global LOOKUP_ATTENTION
        from vitpss.patching import relpos as patching_relpos

        LOOKUP_ATTENTION = patching_relpos.rel_pos_attention
        result = interleaved_times(args)
        print(json.dumps(result, indent=1))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"batch_size": args.batch_size, "threads": args.threads,
                                         "dims": {"embed_dim": args.embed_dim, "num_heads": args.num_heads},
                                         "rounds": args.interleaved, "median_cpu_s": result}, indent=1) + "\n")
        return

    import torch

    rows = []
    header = f"{'rate':>5} {'ViT GB':>7} {'ViT s':>7}"
    for bias in args.bias:
        header += f" | {bias:>11} GB {'mem x':>6} {'s':>7} {'wall x':>6} {'cpu x':>6}"
    print(header, flush=True)
    for rate in args.rates:
        vit = run_child(args, args.vit, rate, "lookup")
        row = {"keep_rate": rate, "vit": vit}
        line = f"{rate:>5.2f} {vit['peak_bytes'] / 1e9:>7.2f} {vit['wall_s']:>7.2f}"
        for bias in args.bias:
            beit = run_child(args, args.beit, rate, bias)
            ratios = {"memory_ratio": beit["peak_bytes"] / vit["peak_bytes"], "wall_ratio": beit["wall_s"] / vit["wall_s"],
                      "cpu_ratio": beit["cpu_s"] / vit["cpu_s"]}
            row[f"beit_{bias}"] = {**beit, **ratios}
            line += (f" | {beit['peak_bytes'] / 1e9:>14.2f} {ratios['memory_ratio']:>6.2f} {beit['wall_s']:>7.2f} "
                     f"{ratios['wall_ratio']:>6.2f} {ratios['cpu_ratio']:>6.2f}")
        rows.append(row)
        print(line, flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "device": args.device,
              "torch": torch.__version__, "vit": args.vit, "beit": args.beit, "batch_size": args.batch_size,
              "threads": args.threads, "dims": {"embed_dim": args.embed_dim, "depth": args.depth, "num_heads": args.num_heads},
              "steps": args.steps, "amp": args.amp, "bias": args.bias,
              "memory": "CUDA max_memory_allocated growth" if args.device.startswith("cuda") else "peak RSS growth",
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
