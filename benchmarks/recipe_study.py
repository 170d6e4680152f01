"""Which PSS recipe to make the default: every recipe on several data settings, chosen by one rule.

    python benchmarks/recipe_study.py run --settings mnist5k-short,cifar10-short --seeds 0 --jobs 2
    python benchmarks/recipe_study.py report            # tables, the rule's choice, time-to-accuracy figure

`run` calls benchmarks/accuracy.py once per setting (same recipes, seeds and epochs for each) and
writes benchmarks/results/study_<setting>_s<seeds>_<n>r.json;
`report` merges all files of a setting (each run once); the files name runs relative to
``--runs/<setting>``, where `report` looks for their step logs (training CPU time, data waits) and
leaves those columns empty when the runs are not there. CIFAR-10 settings read the JPEG copy of
../shared/data (unpack it and pass --cifar-root; say "CIFAR-10 (JPEG copy)" next to its numbers).

Held-out settings (HELD_OUT) were not used to choose the default; they check it afterwards, on a
data set the study never saw (scikit-learn's 8x8 digits, written as an ImageFolder by
``make_digits_folder``) and on 2.5x more CIFAR-10 images:

    python benchmarks/recipe_study.py run --settings digits8,cifar10-500 --recipes baseline,cosine-random --seeds 0,1,2

`report` reads those files and applies the rule: among recipes whose training time is at most
--max-time-ratio of the baseline's in every setting, take the one whose *worst* accuracy gap to the
baseline over all settings is smallest (ties: the faster one). It prints one table per setting
(acc1 mean ± std, gap, time ratio, time to reach the baseline's final acc1, acc1 at inference keep
rates 0.5 and 0.25), the rule's outcome, and draws validation acc1 against training time.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
from pathlib import Path

from vitpss.checkpoint import read_jsonl

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: CIFAR model: a ViT for 32-px images, patch 4 (64 patches + class token), width 96, depth 4.
CIFAR_MODEL = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "4", "--embed-dim", "96",
               "--depth", "4", "--num-heads", "3", "--batch-size", "64", "--lr", "1e-3", "--warmup-epochs", "1",
               "--augment", "pad-crop", "--val-subset", "200"]

#: name -> (epochs, cooldown epochs, `vitpss train` flags); CIFAR_ROOT is replaced by --cifar-root.
SETTINGS: dict[str, tuple[int, int, list[str]]] = {
    "mnist5k-short": (15, 3, []),
    "mnist5k-small": (40, 6, ["--train-subset", "100"]),
    "cifar10-short": (15, 3, ["--data", "CIFAR_ROOT", "--train-subset", "200", *CIFAR_MODEL]),
    # small data, long enough for the baseline to plateau; a narrower ViT (width 64) to fit the CPU budget
    "cifar10-long": (50, 6, ["--data", "CIFAR_ROOT", "--train-subset", "100", *CIFAR_MODEL,
                             "--embed-dim", "64", "--num-heads", "2", "--val-subset", "100"]),
    # held out: checks of the chosen default, not inputs to the rule (report --time-settings / settings)
    "digits8": (30, 5, ["--data", "DIGITS_ROOT", *CIFAR_MODEL, "--in-chans", "1", "--val-subset", "36"]),
    "cifar10-500": (15, 3, ["--data", "CIFAR_ROOT", "--train-subset", "500", *CIFAR_MODEL]),
}
HELD_OUT = ("digits8", "cifar10-500")


def make_digits_folder(root: Path) -> Path:
    """scikit-learn's 1,797 8x8 digits (16 grey levels) as PNGs: ``train/<d>/`` and a stratified 20% ``val/<d>/``."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    marker = root / ".done"
    if marker.exists():
        return root
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    seen: dict[int, int] = {}
    for i in order:
        label = int(digits.target[i])
        split = "val" if seen.get(label, 0) % 5 == 0 else "train"
        seen[label] = seen.get(label, 0) + 1
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    marker.touch()
    return root


def run(args: argparse.Namespace) -> None:
    for name in args.settings.split(","):
        epochs, cooldown, flags = SETTINGS[name]
        roots = {"CIFAR_ROOT": args.cifar_root}
        if "DIGITS_ROOT" in flags:
            roots["DIGITS_ROOT"] = str(make_digits_folder(Path(args.runs) / "digits8-data"))
        flags = [roots.get(f, f) for f in flags]
        cmd = [sys.executable, str(HERE / "accuracy.py"), "--setting", name, "--recipes", args.recipes,
               "--seeds", args.seeds, "--epochs", str(epochs), "--cooldown-epochs", str(cooldown),
               "--sweep-rates", "1.0,0.5,0.25", "--jobs", str(args.jobs), "--reuse",
               "--runs", str(Path(args.runs) / name), *(f"--alias={k}={v}" for k, v in roots.items()),
               "--json", str(RESULTS / f"study_{name}_s{args.seeds.replace(',', '')}_{len(args.recipes.split(','))}r.json"),
               "--", "--threads", "1", *flags]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def ratio_of_means(values: list[float | None], base: list[float | None]) -> float | None:
    """Mean of the logged values over mean of the baseline's (runs made before the value was logged skipped)."""
    values, base = [v for v in values if v is not None], [b for b in base if b is not None]
    return statistics.fmean(values) / statistics.fmean(base) if values and base else None


def time_to_reach(curve: list[float], times: list[float], target: float) -> float | None:
    """Training time at the first evaluation with acc1 >= target (None if never)."""
    return next((t for a, t in zip(curve, times) if a >= target), None)


@functools.lru_cache(maxsize=None)
def step_records(run_dir: str) -> tuple[dict, ...]:
    """The run's train_log.jsonl records, read once (vitpss's reader: a torn last line is ignored)."""
    path = Path(run_dir) / "train_log.jsonl"
    return tuple(read_jsonl(path)) if path.exists() else ()


def data_wait_share(run_dir: str) -> float | None:
    """Share of the training time spent waiting for batches (the log's data_time)."""
    records = step_records(run_dir)
    wait = sum(r["data_time"] for r in records)
    return wait / (wait + sum(r["step_time"] for r in records)) if records else None


def train_cpu_time(run_dir: str) -> float | None:
    """Process CPU time of the training steps and data waits (the log's cpu_time), if logged."""
    records = step_records(run_dir)
    return sum(r["cpu_time"] for r in records) if records and all("cpu_time" in r for r in records) else None


def run_dir(runs_dir: Path, setting: str, run: str) -> str:
    """Where a run of the results JSON lies: its name relative to ``runs_dir/setting`` (files written
    before runs were named that way hold absolute paths, used as they are)."""
    return run if Path(run).is_absolute() else str(runs_dir / setting / run)


def setting_rows(data: dict, runs_dir: Path) -> list[dict]:
    runs = data["runs"]
    where = functools.partial(run_dir, runs_dir, data["meta"]["setting"])
    base = runs["baseline"]
    base_acc = statistics.fmean(r["acc1"] for r in base)
    base_time = statistics.fmean(r["train_time_s"] for r in base)
    base_cpu = statistics.fmean(r["cpu_time_s"] for r in base)
    base_train_cpu = [train_cpu_time(where(r["run"])) for r in base]
    rows = []
    for recipe, rs in runs.items():
        accs = [r["acc1"] for r in rs]
        reach = [time_to_reach(r["curve"], r["curve_time_s"], base_acc) for r in rs]
        rows.append({
            "recipe": recipe, "seeds": len(rs), "acc1": statistics.fmean(accs),
            "acc1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "gap": statistics.fmean(accs) - base_acc,
            "time_ratio": statistics.fmean(r["train_time_s"] for r in rs) / base_time,
            "cpu_ratio": statistics.fmean(r["cpu_time_s"] for r in rs) / base_cpu,
            "train_cpu_ratio": ratio_of_means([train_cpu_time(where(r["run"])) for r in rs], base_train_cpu),
            "reach_ratio": (statistics.fmean(reach) / base_time) if all(x is not None for x in reach) else None,
            "gain5": statistics.fmean(r["gain_last_fifth_smoothed"] for r in rs),
            "at0.5": statistics.fmean(r["sweep"]["0.5"] for r in rs),
            "at0.25": statistics.fmean(r["sweep"]["0.25"] for r in rs),
            "data_wait_share": data_wait_share(where(rs[0]["run"])),
        })
    return rows


def time_ratio(row: dict) -> float:
    """The time measure of the rule: CPU time of the training steps (robust to other load on the
    machine) where it was logged, else the CPU time of the whole loop (evaluations included)."""
    return row["train_cpu_ratio"] if row["train_cpu_ratio"] is not None else row["cpu_ratio"]


def choose(tables: dict[str, list[dict]], max_time_ratio: float,
           time_settings: list[str]) -> tuple[str | None, dict[str, float]]:
    """The rule: smallest worst-case gap over all settings, among recipes within the time bound in
    every setting of ``time_settings`` (those whose model is dominated by the transformer)."""
    recipes = set.intersection(*(set(r["recipe"] for r in rows) for rows in tables.values())) - {"baseline"}
    worst: dict[str, float] = {}
    for recipe in recipes:
        rows = {name: next(r for r in t if r["recipe"] == recipe) for name, t in tables.items()}
        if all(time_ratio(rows[name]) <= max_time_ratio for name in time_settings if name in rows):
            worst[recipe] = min(r["gap"] for r in rows.values())
    best = max(worst, key=lambda k: worst[k]) if worst else None
    return best, worst


def merged_results(results: Path = RESULTS) -> dict[str, dict]:
    """Every setting's runs from all study_<setting>*.json files (one per `run` call), each run once."""
    merged: dict[str, dict] = {}
    for path in sorted(results.glob("study_*.json")):
        if path.name == "study_report.json":
            continue
        data = json.loads(path.read_text())
        entry = merged.setdefault(data["meta"]["setting"], {"meta": data["meta"], "runs": {}})
        for recipe, runs in data["runs"].items():
            known = entry["runs"].setdefault(recipe, [])
            known += [r for r in runs if r["run"] not in {k["run"] for k in known}]
    return {name: data for name, data in merged.items() if "baseline" in data["runs"]}


def report(args: argparse.Namespace) -> None:
    tables, curves = {}, {}
    missing = set()
    for name, data in merged_results(Path(args.results)).items():
        tables[name] = setting_rows(data, Path(args.runs))
        if all(r["data_wait_share"] is None for r in tables[name]):
            missing.add(name)
        curves[name] = data["runs"]
        seeds = sorted({len(runs) for runs in data["runs"].values()})
        print(f"\n{name} ({data['meta']['epochs']} epochs, {'/'.join(map(str, seeds))} seeds, {data['meta']['machine']})")
        print(f"{'recipe':<20}{'acc1':>14}{'gap':>7}{'time':>6}{'cpu':>6}{'tcpu':>6}{'reach':>7}{'gain5':>7}{'@0.5':>7}{'@0.25':>7}"
              f"{'wait':>6}")
        for r in sorted(tables[name], key=lambda r: -r["gap"]):
            reach = f"{r['reach_ratio']:.2f}" if r["reach_ratio"] is not None else "never"
            print(f"{r['recipe']:<20}{r['acc1']:>8.2f} ±{r['acc1_std']:>4.2f}{r['gap']:>+7.2f}{r['time_ratio']:>6.2f}"
                  f"{r['cpu_ratio']:>6.2f}{(r['train_cpu_ratio'] or float('nan')):>6.2f}{reach:>7}{r['gain5']:>+7.2f}{r['at0.5']:>7.1f}{r['at0.25']:>7.1f}"
                  + (f"{100 * r['data_wait_share']:>5.1f}%" if r["data_wait_share"] is not None else f"{'n/a':>6}"))
    if missing:
        print(f"\nno step logs under {args.runs} for {', '.join(sorted(missing))}: their tcpu and wait columns "
              f"are empty and the rule uses the whole loop's CPU time there (pass the study's --runs)")
    time_settings = args.time_settings.split(",")
    held_out = {name: rows for name, rows in tables.items() if name in HELD_OUT}
    best, worst = choose({k: v for k, v in tables.items() if k not in HELD_OUT}, args.max_time_ratio, time_settings)
    print(f"\nrule: recipes at <= {args.max_time_ratio}x the baseline's training CPU time in {', '.join(time_settings)}, "
          f"ranked by their worst gap over all settings:")
    for recipe, gap in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"  {recipe:<20} worst gap {gap:+.2f} pt")
    print(f"chosen: {best}")
    for name, rows in held_out.items():  # checks of the choice on settings the rule did not see
        for r in rows:
            if r["recipe"] == best:
                print(f"held out: {name}: {best} gap {r['gap']:+.2f} pt at {r['train_cpu_ratio'] or float('nan'):.2f}x "
                      f"the baseline's training CPU time")
    out = Path(args.json)
    out.write_text(json.dumps({"max_time_ratio": args.max_time_ratio, "chosen": best, "worst_gap": worst,
                               "held_out": sorted(held_out), "tables": tables}, indent=1))
    print(f"wrote {out}")
    if args.figure:
        draw({k: v for k, v in curves.items() if k not in HELD_OUT}, args.figure,
             [r for r in (best, "cyclic-gumbel", "cyclic-magnitude") if r])


def draw(curves: dict[str, dict], output: str, highlight: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], curves.items()):
        for recipe in ["baseline", *highlight]:
            if recipe not in runs:
                continue
            r = runs[recipe][0]  # seed 0
            ax.plot([t / 60 for t in r["curve_time_s"]], r["curve"], label=recipe,
                    lw=2 if recipe == "baseline" else 1.2)
        ax.set_title(name)
        ax.set_xlabel("training time (min, seed 0)")
        ax.set_ylabel("val acc1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--recipes", default="baseline,cyclic-magnitude,cyclic-random,cyclic-gumbel,cyclic-random-cd,"
                                        "cosine-random,cosine-gumbel,fixed0.5-random-cd")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cifar-root", default="/tmp/cifar10", help="unpacked ../shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--runs", default=str(HERE / ".cache" / "study"))
    p = sub.add_parser("report")
    p.add_argument("--max-time-ratio", type=float, default=0.7)
    p.add_argument("--time-settings", default="cifar10-short,cifar10-long",
                   help="settings whose time ratio the rule bounds (the mnist5k model's steps are mostly fixed costs)")
    p.add_argument("--figure", default="docs/study-time-to-accuracy.png")
    p.add_argument("--runs", default=str(HERE / ".cache" / "study"), help="the runs folder of `run` (for step logs)")
    p.add_argument("--results", default=str(RESULTS), help="folder of the study_*.json files")
    p.add_argument("--json", default=str(RESULTS / "study_report.json"), help="where to write the report")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
