"""End-to-end training time of a PSS schedule vs all patches, against the ideal.

    python benchmarks/schedule_speed.py                        # deit_tiny, 224 px JPEGs, CPU
    python benchmarks/schedule_speed.py --device cuda --amp bf16 --images 4096 --batch-size 128

Runs `vitpss train` as a user would (an ImageFolder of generated 224 px JPEGs, so decoding and
augmentation cost is real; a DataLoader with workers) with the paper's cyclic schedule and with
`--schedule none`, same model and whole epochs, alternating the two (ABBA order) over several
repeats. Reports the measured time ratio (training wall time, evaluation excluded), the ideal
ratio (`vitpss plan`'s predicted time fraction: the schedule's mix of keep rates weighted by the
measured step time of each rate, no data loading) and efficiency = ideal / measured.

With ``--plan-data`` the prediction includes the data loader (``vitpss plan --data``, same
augmentation, workers and ``--in-memory``), and the report gives its error against the measured
ratio of training CPU time (``train_cpu_time_s``: steps and data waits, robust to other load):

    python benchmarks/schedule_speed.py --images 384 --epochs 1 --augment randaug --in-memory off \
        --threads 1 --plan-data --schedule cosine --sampler random --json benchmarks/results/plan_data_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpeg_folder(root: Path, train_images: int, val_images: int, size: int = 224, classes: int = 10) -> Path:
    """An ImageFolder of smooth random JPEGs (``train/`` and ``val/``), made once and reused."""
    marker = root / f".done_{train_images}_{val_images}_{size}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", train_images), ("val", val_images)):
        for i in range(count):
            label = i % classes
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            freq = 1 + label
            phase = rng.uniform(0, 2 * np.pi, 3)
            img = np.stack([np.sin(2 * np.pi * freq * (xx + yy * c) + p) for c, p in zip((0.3, 0.7, 1.1), phase)], -1)
            img = (img + rng.normal(0, 0.3, img.shape)) * 60 + 128
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    marker.touch()
    return root


def run_train(args: argparse.Namespace, schedule: str, data: Path, output: Path) -> dict:
    cmd = [sys.executable, "-m", "vitpss", "train", "--model", args.model, "--data", str(data),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           *(["--workers", str(args.workers)] if args.workers is not None else []),
           "--schedule", schedule, "--sampler", args.sampler, "--device", args.device, "--amp", args.amp,
           "--output", str(output), "--overwrite", "--quiet", "--seed", "0", *data_flags(args)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((output / "summary.json").read_text())
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return {"train_time_s": summary["train_time_s"], "train_cpu_time_s": summary["train_cpu_time_s"],
            "steps": len(log),
            "step_time_s": sum(r["step_time"] for r in log), "data_time_s": sum(r["data_time"] for r in log),
            "mean_keep_rate": float(np.mean([r["keep_rate"] for r in log]))}


def data_flags(args: argparse.Namespace) -> list[str]:
    """The data pipeline's flags, shared by the training runs and ``vitpss plan --data``."""
    flags = ["--augment", args.augment, "--in-memory", args.in_memory]
    flags += ["--workers", str(args.workers)] if args.workers is not None else []
    return flags + (["--threads", str(args.threads)] if args.threads else [])


def plan_time_fraction(args: argparse.Namespace, steps_per_epoch: int, data: Path) -> dict:
    cmd = [sys.executable, "-m", "vitpss", "plan", "--model", args.model, "--batch-size", str(args.batch_size),
           "--device", args.device, "--amp", args.amp, "--schedule", args.schedule, "--sampler", args.sampler,
           "--epochs", str(args.epochs), "--steps-per-epoch", str(steps_per_epoch), "--repeats", "5", "--json"]
    if args.plan_data:
        cmd += ["--data", str(data), *data_flags(args)]
    elif args.threads:
        cmd += ["--threads", str(args.threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--images", type=int, default=320, help="training images (whole epochs of them)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: vitpss's)")
    parser.add_argument("--repeats", type=int, default=2, help="ABBA pairs: each schedule runs 2x this")
    parser.add_argument("--sampler", default="magnitude")
    parser.add_argument("--schedule", default="cyclic", help="the PSS schedule timed against --schedule none")
    parser.add_argument("--augment", default="light")
    parser.add_argument("--in-memory", default="auto", help="auto, on or off (off: decode the JPEGs every step)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of every run (default: torch's)")
    parser.add_argument("--plan-data", action="store_true",
                        help="predict with vitpss plan --data (the loader included) and report the prediction's error")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", help="off, bf16 or fp16")
    parser.add_argument("--cache", default="benchmarks/.cache/jpeg224")
    parser.add_argument("--json", default="benchmarks/results/schedule_speed.json")
    args = parser.parse_args()

    data = make_jpeg_folder(Path(args.cache), args.images, 2 * args.batch_size)
    steps_per_epoch = args.images // args.batch_size
    plan = plan_time_fraction(args, steps_per_epoch, data)  # first: a bad flag fails before the long runs
    pss = args.schedule
    results: dict[str, list[dict]] = {"none": [], pss: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for schedule in ("none", pss, pss, "none")[:: 1 if i % 2 == 0 else -1]:
                r = run_train(args, schedule, data, Path(tmp) / f"{schedule}{i}")
                results[schedule].append(r)
                print(f"  {schedule:<6} train {r['train_time_s']:7.1f} s  (compute {r['step_time_s']:7.1f} s, "
                      f"waiting for data {r['data_time_s']:6.1f} s)", flush=True)

    def med(schedule: str, key: str) -> float:
        return statistics.median(r[key] for r in results[schedule])

    measured = med(pss, "train_time_s") / med("none", "train_time_s")
    measured_cpu = med(pss, "train_cpu_time_s") / med("none", "train_cpu_time_s")
    compute_only = med(pss, "step_time_s") / med("none", "step_time_s")
    ideal = plan["time_fraction"]
    report = {
        "model": args.model, "device": args.device, "amp": args.amp, "batch_size": args.batch_size,
        "workers": args.workers, "epochs": args.epochs, "steps_per_epoch": steps_per_epoch, "schedule": pss,
        "sampler": args.sampler, "augment": args.augment, "in_memory": args.in_memory, "threads": args.threads,
        "plan_includes_data": args.plan_data, "measured_cpu_time_ratio": measured_cpu,
        "prediction_error_vs_cpu_time": ideal / measured_cpu - 1,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "runs": results,
        "mean_keep_rate": plan["mean_keep_rate"], "compute_fraction": plan["compute_fraction"],
        "ideal_time_ratio": ideal, "measured_time_ratio": measured, "compute_time_ratio": compute_only,
        "efficiency": ideal / measured,
        "data_wait_share": {s: med(s, "data_time_s") / med(s, "train_time_s") for s in results},
    }
    print(f"\n{args.model}, batch {args.batch_size}, workers {args.workers if args.workers is not None else 'default'}, {args.device}, amp {args.amp}, "
          f"{args.epochs} epochs x {steps_per_epoch} steps, {2 * args.repeats} runs per schedule (median)")
    print(f"{'':<34}{'none':>10}{pss:>10}")
    for label, key in (("training wall time (s)", "train_time_s"), ("  of which compute (s)", "step_time_s"),
                       ("  of which waiting for data (s)", "data_time_s"), ("training CPU time (s)", "train_cpu_time_s")):
        print(f"{label:<34}{med('none', key):>10.1f}{med(pss, key):>10.1f}")
    print(f"mean keep rate {plan['mean_keep_rate']:.3f}   compute (FLOP) fraction {plan['compute_fraction']:.3f}")
    print(f"ideal time ratio (vitpss plan) {ideal:.3f}   measured {measured:.3f}   compute-only {compute_only:.3f}")
    print(f"efficiency = ideal / measured = {ideal / measured:.3f}")
    print(f"prediction ({'with' if args.plan_data else 'without'} the loader) vs measured CPU time ratio "
          f"{measured_cpu:.3f}: {ideal / measured_cpu - 1:+.1%}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
