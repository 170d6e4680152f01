"""Same time, best model: every way of spending a training-time budget, on several data settings.

    python benchmarks/budget_study.py run --settings c10-1k --methods all-patches,pss --budgets 0.5,0.7,1.0 \
        --seeds 0 --jobs 2 --cifar-root D --tin-root D
    python benchmarks/budget_study.py report          # tables, regret, the rule's choice, figures

A budget F is a fraction of the training time of the setting's all-patch run of E epochs (E chosen
per setting so that that run has plateaued: the all-patch runs at 0.5 E and 0.7 E show how much the
last epochs still gain). Every method gets the same budget through ``vitpss train --epochs E
--budget F``: vitpss measures the model's step cost at each keep rate, then chooses the number of
epochs whose predicted training time fits F times that of E epochs at all patches. The all-patch
runs use ``--schedule none``, for which this is floor(F x E) epochs.

Methods (``METHODS``): all patches for fewer epochs; the default PSS recipe (cosine rise of random
patches); FLIP-style patch dropout (a fixed half of the patches at random, then unmasked epochs at the
end); progressive resizing (the same cosine rise realised as a lower image resolution:
``--tokens resize``).

Time is the process CPU time of the training steps and data waits (train_log.jsonl ``cpu_time``), so
that runs side by side on a loaded machine compare. Data: CIFAR-10 (JPEG copy) and a 20-class subset
of the Tiny-ImageNet dev set (``--tin-root`` holds train/ and val/ with the 100 classes; the first 20
class folders in sorted order are linked into a subset folder), scikit-learn's 8x8 digits, mnist5k.
Results: benchmarks/results/budget_<setting>.json (run names relative to --runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

#: A ViT with 64 tokens, width 64, depth 4, 2 heads: small enough for a 2-core CPU.
MODEL = ["--model", "vit_tiny_patch16_224", "--embed-dim", "64", "--depth", "4", "--num-heads", "2",
         "--batch-size", "64", "--lr", "1e-3", "--warmup-epochs", "1", "--augment", "pad-crop"]

#: name -> (E: epochs of the all-patch reference run, `vitpss train` flags). Roots are filled in by `run`.
SETTINGS: dict[str, tuple[int, list[str]]] = {
    "c10-1k": (40, ["--data", "CIFAR_ROOT", "--img-size", "32", "--patch-size", "4", "--train-subset", "100",
                    "--val-subset", "100", *MODEL]),
    "c10-3k": (20, ["--data", "CIFAR_ROOT", "--img-size", "32", "--patch-size", "4", "--train-subset", "300",
                    "--val-subset", "100", *MODEL]),
    "tin20": (25, ["--data", "TIN20_ROOT", "--img-size", "64", "--patch-size", "8", "--train-subset", "100",
                   *MODEL]),
    "digits8": (30, ["--data", "DIGITS_ROOT", "--img-size", "32", "--patch-size", "4", "--in-chans", "1",
                     "--hflip", "0", "--val-subset", "36", *MODEL]),
    # the default job's data and model (vitpss_tiny_mnist: 28 px, patch 7, 16 tokens), twice its epochs
    "mnist5k": (30, ["--data", "mnist5k"]),
}

#: name -> `vitpss train` flags; BUDGET is replaced by the budget. all-patches: epochs floor(F x E).
METHODS: dict[str, list[str]] = {
    "all-patches": ["--schedule", "none"],
    "pss": ["--schedule", "cosine", "--low", "0.2", "--sampler", "random", "--budget", "BUDGET"],
    # FLIP (Li et al. 2023): 50% random patches, then a short unmasked tuning (the last ~10% of epochs)
    "flip": ["--schedule", "fixed", "--low", "0.5", "--sampler", "random", "--cooldown-epochs", "COOLDOWN",
             "--budget", "BUDGET"],
    "resize": ["--schedule", "cosine", "--low", "0.2", "--tokens", "resize", "--budget", "BUDGET"],
}


def make_subset_folder(root: Path, out: Path, classes: int) -> Path:
    """An ImageFolder of the first ``classes`` class folders of ``root`` (symbolic links)."""
    for split in ("train", "val"):
        names = sorted(p.name for p in (root / split).iterdir() if p.is_dir())[:classes]
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = out / split / name
            if not link.exists():
                link.symlink_to((root / split / name).resolve(), target_is_directory=True)
    return out


def resolve_flags(flags: list[str], args: argparse.Namespace) -> list[str]:
    roots = {"CIFAR_ROOT": args.cifar_root}
    if "TIN20_ROOT" in flags:
        roots["TIN20_ROOT"] = str(make_subset_folder(Path(args.tin_root), Path(args.runs) / "tin20-data", 20))
    if "DIGITS_ROOT" in flags:
        from recipe_study import make_digits_folder
        roots["DIGITS_ROOT"] = str(make_digits_folder(Path(args.runs) / "digits8-data"))
    return [roots.get(f, f) for f in flags]


def run_name(method: str, budget: float, seed: int) -> str:
    return f"{method}_F{budget:g}_s{seed}"


def train_cpu_time(run: Path) -> float:
    """Process CPU time of the training steps and data waits (train_log.jsonl)."""
    return sum(json.loads(line)["cpu_time"] for line in (run / "train_log.jsonl").read_text().splitlines() if line)


def one_run(args: argparse.Namespace, setting: str, method: str, budget: float, seed: int) -> dict:
    epochs, flags = SETTINGS[setting]
    out = Path(args.runs) / setting / run_name(method, budget, seed)
    if not (out / "summary.json").exists():
        method_flags = [f.replace("BUDGET", f"{budget:g}") for f in METHODS[method]]
        if method == "all-patches":
            run_epochs = max(1, math.floor(budget * epochs + 1e-9))
        else:
            run_epochs = epochs
            method_flags = [f.replace("COOLDOWN", str(max(1, round(0.1 * epochs)))) for f in method_flags]
        cmd = [sys.executable, "-m", "vitpss", "train", "--epochs", str(run_epochs), "--seed", str(seed),
               "--output", str(out), "--overwrite", "--quiet", "--threads", "1", *method_flags,
               *resolve_flags(flags, args)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    val = [json.loads(line) for line in (out / "val_log.jsonl").read_text().splitlines() if line]
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    by_epoch: dict[int, float] = {}
    for s in steps:
        by_epoch[s["epoch"]] = by_epoch.get(s["epoch"], 0.0) + s["cpu_time"]
    cpu_curve, total = [], 0.0
    for v in val:
        total += by_epoch.get(v["epoch"], 0.0)
        cpu_curve.append(total)
    return {"run": str(out.relative_to(args.runs)), "method": method, "budget": budget, "seed": seed,
            "epochs": len(val), "acc1": summary["acc1"], "best_acc1": summary["best_acc1"],
            "train_cpu_s": train_cpu_time(out), "train_time_s": summary["train_time_s"],
            "budget_plan": summary.get("budget"), "curve": [v["acc1"] for v in val], "curve_cpu_s": cpu_curve}


def run(args: argparse.Namespace) -> None:
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for setting in args.settings.split(","):
        jobs = [(m, b, s) for s in seeds for b in budgets for m in args.methods.split(",")]
        path = RESULTS / f"budget_{setting}.json"
        data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for job, result in zip(jobs, pool.map(lambda j: one_run(args, setting, *j), jobs)):
                data["runs"][result["run"]] = result
                print(f"{setting:<9} {result['run']:<24} acc1 {result['acc1']:6.2f}  epochs {result['epochs']:3d}  "
                      f"train CPU {result['train_cpu_s']:7.1f} s", flush=True)
                data["meta"] = {"setting": setting, "E": SETTINGS[setting][0], "flags": SETTINGS[setting][1],
                                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                "time": "process CPU time of the training steps (train_log.jsonl cpu_time)"}
                path.write_text(json.dumps(data, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train the runs (kept under --runs; finished ones are reused)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budgets", default="0.5,0.7,1.0")
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs", default=str(HERE / ".cache" / "budget_runs"))
    p.add_argument("--cifar-root", help="CIFAR-10 JPEG ImageFolder (train/, val/)")
    p.add_argument("--tin-root", help="Tiny-ImageNet dev ImageFolder (train/, val/)")
    p.set_defaults(func=run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
