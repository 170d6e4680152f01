"""Accuracy and training time of PSS recipes vs the baseline on one data setting, several seeds each.

    python benchmarks/accuracy.py                                   # all recipes, 3 seeds, mnist5k
    python benchmarks/accuracy.py --recipes baseline,cyclic-random --seeds 0 --epochs 10
    python benchmarks/accuracy.py --setting cifar10-short -- --data cifar10 --train-subset 500 ...

The data and model are whatever the extra `vitpss train` flags after `--` say (default: mnist5k and
the default model); `--setting` names them in the output. benchmarks/recipe_study.py runs this
over several settings and chooses the default recipe.

Each (recipe, seed) is one `vitpss train` run (same model, recipe and epochs; only the schedule
and sampler differ), followed by `vitpss sweep` of its final checkpoint at several inference keep
rates. Runs are kept under --runs (reused with --reuse) so figures can be drawn from them
(`vitpss plot curves ... --x time`); the JSON names each run relative to --runs, and no path of the
machine: --runs and path arguments inside benchmarks/ relative to it, data roots by their --alias. Prints acc1 mean ± std, the acc1 gained over the last fifth
of training (gain5: a converged run gains < 0.3 pt; g5~3: the same with both end points averaged
over 3 evaluations), training time, whole-run wall and process CPU time (as ratios to the
baseline) and the sweep per recipe, and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

RECIPES: dict[str, list[str]] = {
    "baseline": ["--schedule", "none"],
    "cyclic-magnitude": ["--schedule", "cyclic", "--sampler", "magnitude"],
    "cyclic-magnitude-cd": ["--schedule", "cyclic", "--sampler", "magnitude", "--cooldown-epochs", "COOLDOWN"],
    "cyclic-random": ["--schedule", "cyclic", "--sampler", "random"],
    "cyclic-random-cd": ["--schedule", "cyclic", "--sampler", "random", "--cooldown-epochs", "COOLDOWN"],
    "cyclic-gumbel": ["--schedule", "cyclic", "--sampler", "gumbel-magnitude"],
    "cyclic-gumbel-cd": ["--schedule", "cyclic", "--sampler", "gumbel-magnitude", "--cooldown-epochs", "COOLDOWN"],
    # rising schedules: few patches early, all patches at the end, when the LR anneals
    "linear-gumbel": ["--schedule", "linear", "--sampler", "gumbel-magnitude"],
    "cosine-gumbel": ["--schedule", "cosine", "--sampler", "gumbel-magnitude"],
    "fixed0.6-magnitude": ["--schedule", "fixed", "--low", "0.6", "--sampler", "magnitude"],
    "cosine-random": ["--schedule", "cosine", "--sampler", "random"],
    "cosine-random-cd": ["--schedule", "cosine", "--sampler", "random", "--cooldown-epochs", "COOLDOWN"],
    "linear-random": ["--schedule", "linear", "--sampler", "random"],
    "cosine-magnitude": ["--schedule", "cosine", "--sampler", "magnitude"],
    # FLIP-style (Li et al. 2023): half the patches at random, then the last epochs with all of them
    "fixed0.5-random-cd": ["--schedule", "fixed", "--low", "0.5", "--sampler", "random", "--cooldown-epochs", "COOLDOWN"],
}


def portable(arg: str, aliases: dict[str, str] | None = None) -> str:
    """``arg`` as the results JSON records it: an alias's name for its path, a path inside benchmarks/
    relative to it, any other absolute path by its last component (no path of this machine)."""
    for name, path in (aliases or {}).items():
        if arg == path or Path(arg).resolve() == Path(path).resolve():
            return name
    path = Path(arg)
    if not path.is_absolute() and not path.exists():
        return arg  # a flag or value, not a path
    try:
        return path.resolve().relative_to(HERE).as_posix()
    except ValueError:
        return path.name if path.is_absolute() else arg


def run(cmd: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "vitpss", *cmd], check=True, stdout=subprocess.DEVNULL)


def one_run(args: argparse.Namespace, recipe: str, seed: int) -> dict:
    out = Path(args.runs) / f"{recipe}_e{args.epochs}_s{seed}"
    flags = [f.replace("COOLDOWN", str(args.cooldown_epochs)) for f in RECIPES[recipe]]
    if not (args.reuse and (out / "summary.json").exists()):
        run(["train", "--epochs", str(args.epochs), "--seed", str(seed), "--output", str(out), "--overwrite",
             "--quiet", *flags, *args.train_args])
    if not (args.reuse and (out / "sweep.json").exists()):
        # sweep with the sampler the run trained with; the baseline with magnitude (as the paper did)
        sampler = [] if recipe != "baseline" else ["--sampler", "magnitude"]
        run(["sweep", "--checkpoint", str(out / "checkpoint.pt"), "--keep-rates", args.sweep_rates,
             "--output", str(out), "--repeats", "1", *sampler])
    summary = json.loads((out / "summary.json").read_text())
    ideal = None
    if args.step_costs:  # the time ratio the run's keep rates would give if only the step's compute mattered
        step_vs_full = json.loads(Path(args.step_costs).read_text())["step_vs_full"]
        rates = [json.loads(line)["keep_rate"] for line in (out / "train_log.jsonl").read_text().splitlines()]
        ideal = statistics.fmean(step_vs_full[f"{rate:.1f}"] for rate in rates)
    sweep = json.loads((out / "sweep.json").read_text())
    rows = sweep["rows"] if isinstance(sweep, dict) else sweep
    val = [json.loads(line) for line in (out / "val_log.jsonl").read_text().splitlines()]
    acc = [v["acc1"] for v in val]
    start = len(acc) - (len(acc) // 5 + 1)  # the evaluation at the start of the last fifth of training
    # the same gain with each end point averaged over 3 evaluations: one evaluation of 1,000 digits varies by ~0.3 pt
    smoothed = statistics.fmean(acc[-3:]) - statistics.fmean(acc[max(start - 1, 0):start + 2])
    return {"run": out.relative_to(args.runs).as_posix(), "acc1": summary["acc1"], "best_acc1": summary["best_acc1"],
            "train_time_s": summary["train_time_s"], "wall_time_s": summary.get("wall_time_s"),
            "cpu_time_s": summary.get("cpu_time_s"), "compute_fraction": summary["compute_fraction"],
            "gain_last_fifth": summary["acc1"] - acc[start], "gain_last_fifth_smoothed": smoothed, "curve": acc,
            "curve_time_s": list(itertools.accumulate(v["epoch_time"] for v in val)),  # training time at each point
            "ideal_time_ratio": ideal,
            "sweep": {f"{r['keep_rate']:g}": r["acc1"] for r in rows}}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--setting", default="mnist5k", help="name of the data/model setting (for the output)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cooldown-epochs", type=int, default=3)
    parser.add_argument("--sweep-rates", default="1.0,0.8,0.6,0.4,0.2")
    parser.add_argument("--runs", default="benchmarks/.cache/accuracy_runs")
    parser.add_argument("--reuse", action="store_true", help="skip runs whose results exist")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (timings are then less comparable)")
    parser.add_argument("--json", default="benchmarks/results/accuracy.json")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=PATH",
                        help="write NAME instead of PATH in the JSON (e.g. CIFAR_ROOT=/tmp/cifar10); repeatable")
    parser.add_argument("--step-costs", metavar="JSON",
                        help="benchmarks/overhead.py results of the same model: adds the ideal time ratio of each "
                             "recipe (its logged keep rates weighted by step cost) and efficiency = ideal / measured")
    parser.add_argument("train_args", nargs="*", help="extra `vitpss train` flags (after --)")
    args = parser.parse_args()

    bad = [a for a in args.alias if "=" not in a]
    if bad:
        parser.error(f"--alias {bad[0]}: give NAME=PATH, e.g. --alias CIFAR_ROOT=/tmp/cifar10")
    aliases = dict(a.split("=", 1) for a in args.alias)
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}: choose from {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {recipe: [] for recipe in recipes}
    jobs = [(recipe, seed) for seed in seeds for recipe in recipes]  # seed-major: drift hits all recipes
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (recipe, seed), r in zip(jobs, pool.map(lambda job: one_run(args, *job), jobs)):
            results[recipe].append(r)
            print(f"  {recipe:<22} seed {seed}: acc1 {r['acc1']:.2f}  time {r['train_time_s']:.0f} s  "
                  f"gain over last fifth {r['gain_last_fifth']:+.2f}", flush=True)

    base_runs = results.get("baseline", results[recipes[0]])
    base_time = statistics.fmean(r["train_time_s"] for r in base_runs)
    rates = args.sweep_rates.split(",")
    table = []
    print(f"\n{args.setting}, {args.epochs} epochs, seeds {args.seeds}; acc1 at inference keep rate 1.0 unless noted")
    print(f"{'recipe':<22}{'acc1':>14}{'best':>8}{'gain5':>7}{'g5~3':>7}{'time s':>8}{'t/base':>7}{'wall/b':>7}{'cpu/b':>7}"
          f"{'FLOPs':>7}"
          + "".join(f"{'@' + r:>7}" for r in rates[1:]))
    for recipe, runs in results.items():
        acc, std = mean_std([r["acc1"] for r in runs])
        row = {"recipe": recipe, "acc1_mean": acc, "acc1_std": std,
               "best_acc1_mean": statistics.fmean(r["best_acc1"] for r in runs),
               "train_time_s": statistics.fmean(r["train_time_s"] for r in runs),
               "compute_fraction": runs[0]["compute_fraction"],
               "gain_last_fifth_mean": statistics.fmean(r["gain_last_fifth"] for r in runs),
               "gain_last_fifth_smoothed_mean": statistics.fmean(r["gain_last_fifth_smoothed"] for r in runs),
               "sweep_acc1_mean": {k: statistics.fmean(r["sweep"][f"{float(k):g}"] for r in runs) for k in rates}}
        row["time_vs_baseline"] = row["train_time_s"] / base_time
        if args.step_costs:
            row["ideal_time_ratio"] = statistics.fmean(r["ideal_time_ratio"] for r in runs)
            row["efficiency"] = row["ideal_time_ratio"] / row["time_vs_baseline"]
        for clock in ("wall_time_s", "cpu_time_s"):  # absent in runs made before vitpss recorded them
            if all(r.get(clock) for r in runs + base_runs):
                row[clock] = statistics.fmean(r[clock] for r in runs)
                row[clock.replace("_time_s", "_vs_baseline")] = row[clock] / statistics.fmean(r[clock] for r in base_runs)
        table.append(row)
        print(f"{recipe:<22}{acc:>8.2f} ±{std:>4.2f}{row['best_acc1_mean']:>8.2f}"
              f"{row['gain_last_fifth_mean']:>+7.2f}{row['gain_last_fifth_smoothed_mean']:>+7.2f}{row['train_time_s']:>8.0f}"
              f"{row['time_vs_baseline']:>7.2f}{row.get('wall_vs_baseline', float('nan')):>7.2f}"
              f"{row.get('cpu_vs_baseline', float('nan')):>7.2f}{row['compute_fraction']:>7.2f}"
              + "".join(f"{row['sweep_acc1_mean'][k]:>7.1f}" for k in rates[1:])
              + (f"   ideal {row['ideal_time_ratio']:.3f}, efficiency {row['efficiency']:.3f}" if args.step_costs else ""))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "setting": args.setting, "epochs": args.epochs, "seeds": seeds,
            "cooldown_epochs": args.cooldown_epochs, "runs": portable(args.runs),
            "train_args": [portable(a, aliases) for a in args.train_args]}
    out.write_text(json.dumps({"meta": meta, "table": table, "runs": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
