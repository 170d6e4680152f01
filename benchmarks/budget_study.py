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
    "c10-3k": (16, ["--data", "CIFAR_ROOT", "--img-size", "32", "--patch-size", "4", "--train-subset", "300",
                    "--val-subset", "100", *MODEL]),
    "tin20": (20, ["--data", "TIN20_ROOT", "--img-size", "64", "--patch-size", "8", "--train-subset", "100",
                   *MODEL]),
    "digits8": (30, ["--data", "DIGITS_ROOT", "--img-size", "32", "--patch-size", "4", "--in-chans", "1",
                     "--hflip", "0", "--val-subset", "36", *MODEL]),
    # held out (HELD_OUT): not used to choose BUDGET_RECIPES, run afterwards to check them; other classes, E halved
    "tin20b": (10, ["--data", "TIN20B_ROOT", "--img-size", "64", "--patch-size", "8", "--train-subset", "100",
                    *MODEL]),
    # the default job's data and model (vitpss_tiny_mnist: 28 px, patch 7, 16 tokens), twice its epochs
    "mnist5k": (30, ["--data", "mnist5k"]),
}

HELD_OUT = ("tin20b",)

#: name -> `vitpss train` flags; BUDGET is replaced by the budget. all-patches: epochs floor(F x E).
METHODS: dict[str, list[str]] = {
    "all-patches": ["--schedule", "none"],
    "pss": ["--schedule", "cosine", "--low", "0.2", "--sampler", "random", "--budget", "BUDGET"],
    # FLIP (Li et al. 2023): 50% random patches, then a short unmasked tuning (the last ~10% of epochs)
    "flip": ["--schedule", "fixed", "--low", "0.5", "--sampler", "random", "--cooldown-epochs", "COOLDOWN",
             "--budget", "BUDGET"],
    "resize": ["--schedule", "cosine", "--low", "0.2", "--tokens", "resize", "--budget", "BUDGET"],
}


def make_subset_folder(root: Path, out: Path, classes: int, first: int = 0) -> Path:
    """An ImageFolder of ``classes`` class folders of ``root`` from the ``first`` in sorted order (symbolic links)."""
    for split in ("train", "val"):
        names = sorted(p.name for p in (root / split).iterdir() if p.is_dir())[first:first + classes]
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
    if "TIN20B_ROOT" in flags:
        roots["TIN20B_ROOT"] = str(make_subset_folder(Path(args.tin_root), Path(args.runs) / "tin20b-data", 20, 20))
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


def collect(args: argparse.Namespace) -> None:
    """Rebuild every results JSON from the finished runs under --runs (runs never trained here)."""
    for setting in args.settings.split(","):
        folder = Path(args.runs) / setting
        if not folder.is_dir():
            continue
        runs = {}
        for summary in sorted(folder.glob("*_F*_s*/summary.json")):
            method, budget, seed = summary.parent.name.rsplit("_", 2)
            runs[f"{setting}/{summary.parent.name}"] = one_run(args, setting, method, float(budget[1:]), int(seed[1:]))
        path = RESULTS / f"budget_{setting}.json"
        path.write_text(json.dumps({"runs": runs, "meta": meta(setting)}, indent=1))
        print(f"{setting}: {len(runs)} runs -> {path.name}")


def meta(setting: str) -> dict:
    return {"setting": setting, "E": SETTINGS[setting][0], "flags": SETTINGS[setting][1],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "time": "process CPU time of the training steps (train_log.jsonl cpu_time)"}


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
                data["meta"] = meta(setting)
                path.write_text(json.dumps(data, indent=1))


# --------------------------------------------------------------------------- report


def load_results(settings: list[str]) -> dict[str, dict]:
    out = {}
    for setting in settings:
        path = RESULTS / f"budget_{setting}.json"
        if path.exists():
            out[setting] = json.loads(path.read_text())
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def setting_table(data: dict) -> dict:
    """Per (method, budget): acc1 mean/std, seeds, CPU ratio to the all-patch E-epoch runs, epochs, prediction."""
    runs = list(data["runs"].values())
    ref = [r for r in runs if r["method"] == "all-patches" and r["budget"] == 1.0]
    ref_acc, ref_cpu = statistics.fmean(r["acc1"] for r in ref), statistics.fmean(r["train_cpu_s"] for r in ref)
    cells: dict[tuple[str, float], dict] = {}
    for method, budget in sorted({(r["method"], r["budget"]) for r in runs}):
        rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
        acc, std = mean_std([r["acc1"] for r in rs])
        predicted = [r["budget_plan"]["predicted_fraction"] for r in rs if r.get("budget_plan")]
        cpu = statistics.fmean(r["train_cpu_s"] for r in rs) / ref_cpu
        cells[(method, budget)] = {
            "method": method, "budget": budget, "seeds": len(rs), "acc1": acc, "acc1_std": std,
            "cpu_ratio": cpu, "epochs": statistics.fmean(r["epochs"] for r in rs),
            "predicted": statistics.fmean(predicted) if predicted else math.floor(budget * data["meta"]["E"] + 1e-9)
            / data["meta"]["E"],
            "vs_reference": acc - ref_acc}
    # plateau evidence: what the all-patch run gains from 0.7 E to E epochs, and over its last fifth
    gain_07 = ref_acc - cells[("all-patches", 0.7)]["acc1"] if ("all-patches", 0.7) in cells else None
    last_fifth = statistics.fmean(
        statistics.fmean(r["curve"][-3:]) - statistics.fmean(r["curve"][int(0.8 * len(r["curve"])) - 1:][:3])
        for r in ref)
    return {"reference_acc1": ref_acc, "reference_cpu_s": ref_cpu, "reference_seeds": len(ref),
            "gain_from_0.7E": gain_07, "gain_last_fifth": last_fifth, "cells": cells}


def regrets(tables: dict[str, dict], budgets: list[float], methods: list[str]) -> dict:
    """regret[budget][method][setting]: acc1 behind the best method of that setting and budget."""
    out: dict[float, dict[str, dict[str, float]]] = {}
    for b in budgets:
        out[b] = {}
        for setting, t in tables.items():
            present = {m: t["cells"][(m, b)]["acc1"] for m in methods if (m, b) in t["cells"]}
            if not present:
                continue
            best = max(present.values())
            for m, acc in present.items():
                out[b].setdefault(m, {})[setting] = best - acc
    return out


def report(args: argparse.Namespace) -> None:
    settings = args.settings.split(",")
    tables = {name: setting_table(d) for name, d in load_results(settings).items()}
    methods = list(METHODS)
    budgets = sorted({b for t in tables.values() for (_, b) in t["cells"]})
    for name, t in tables.items():
        print(f"\n{name}: all patches for E = {SETTINGS[name][0]} epochs: {t['reference_acc1']:.2f}% "
              f"({t['reference_seeds']} seeds, {t['reference_cpu_s']:.0f} s training CPU); gain 0.7E -> E "
              + (f"{t['gain_from_0.7E']:+.2f}" if t["gain_from_0.7E"] is not None else "-")
              + f" pt, over the last fifth {t['gain_last_fifth']:+.2f} pt")
        print(f"{'budget':>6} {'method':<12} {'seeds':>5} {'acc1':>14} {'vs E':>6} {'epochs':>6} {'CPU':>5} {'pred':>5}")
        for (m, b), c in sorted(t["cells"].items(), key=lambda kv: (kv[0][1], methods.index(kv[0][0]))):
            print(f"{b:>6g} {m:<12} {c['seeds']:>5} {c['acc1']:>8.2f} ±{c['acc1_std']:>4.2f} {c['vs_reference']:>+6.2f} "
                  f"{c['epochs']:>6.0f} {c['cpu_ratio']:>5.2f} {c['predicted']:>5.2f}")
    reg = regrets(tables, budgets, methods)
    choice = {}
    print("\nworst-case regret (pt behind the best method of the setting and budget; settings with all methods)")
    print(f"{'budget':>6} " + " ".join(f"{m:>12}" for m in methods) + "   rule's choice")
    for b in budgets:
        full = [s for s in tables if all(s in reg[b].get(m, {}) for m in methods)]
        worst = {m: max(reg[b][m][s] for s in full) for m in methods if full}
        choice[b] = min(worst, key=worst.get) if worst else None
        print(f"{b:>6g} " + " ".join(f"{worst.get(m, float('nan')):>12.2f}" for m in methods) + f"   {choice[b]}"
              + f"  ({len(full)} settings)")
    out = {"settings": {n: {**{k: v for k, v in t.items() if k != "cells"},
                            "cells": [c for c in t["cells"].values()]} for n, t in tables.items()},
           "regret": {f"{b:g}": reg[b] for b in budgets}, "choice": {f"{b:g}": c for b, c in choice.items()}}
    stem = "budget_report" + ("_heldout" if set(tables) <= set(HELD_OUT) else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(tables, budgets, methods, reg, choice))
    figures(tables, budgets, methods, Path(args.figure))
    print(f"\nwrote {RESULTS / stem}.{{json,md}} and {args.figure}")


def markdown(tables: dict[str, dict], budgets: list[float], methods: list[str], reg: dict, choice: dict) -> str:
    """The report as Markdown tables (docs/benchmarks.md quotes them)."""
    out = []
    for name, t in tables.items():
        gain = "-" if t["gain_from_0.7E"] is None else f"{t['gain_from_0.7E']:+.2f}"
        out += [f"**{name}** (E = {SETTINGS[name][0]}; all patches for E epochs: {t['reference_acc1']:.2f}%, "
                f"{t['reference_seeds']} seeds, {t['reference_cpu_s']:.0f} s training CPU; gain from 0.7 E to E: "
                f"{gain} pt, over the last fifth of E: {t['gain_last_fifth']:+.2f} pt)", "",
                "| budget | method | seeds | acc1 | vs E epochs | epochs | CPU / E epochs | predicted |",
                "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for (m, b), c in sorted(t["cells"].items(), key=lambda kv: (kv[0][1], methods.index(kv[0][0]))):
            out.append(f"| {b:g} | {m} | {c['seeds']} | {c['acc1']:.2f} ± {c['acc1_std']:.2f} | "
                       f"{c['vs_reference']:+.2f} | {c['epochs']:.0f} | {c['cpu_ratio']:.2f} | {c['predicted']:.2f} |")
        out.append("")
    out += ["| budget | " + " | ".join(methods) + " | smallest worst-case regret |",
            "|---:|" + "---:|" * len(methods) + "---|"]
    for b in budgets:
        full = [s for s in tables if all(s in reg[b].get(m, {}) for m in methods)]
        if not full:
            continue
        cells = []
        for m in methods:
            worst = max(reg[b][m][s] for s in full)
            where = max(full, key=lambda s: reg[b][m][s])
            cells.append(f"{worst:.2f} ({where})" if worst > 0 else "0.00")
        out.append(f"| {b:g} | " + " | ".join(cells) + f" | **{choice[b]}** |")
    return "\n".join(out) + "\n"


def figures(tables: dict[str, dict], budgets: list[float], methods: list[str], path: Path) -> None:
    """Accuracy against budget per setting (one panel each), mean and std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.6 * len(tables), 3.4), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        for m in methods:
            pts = [(b, t["cells"][(m, b)]) for b in budgets if (m, b) in t["cells"]]
            if pts:
                ax.errorbar([c["cpu_ratio"] for _, c in pts], [c["acc1"] for _, c in pts],
                            yerr=[c["acc1_std"] for _, c in pts], marker="o", capsize=3, label=m)
        ax.axhline(t["reference_acc1"], color="grey", lw=0.8, ls=":")
        ax.set_title(name)
        ax.set_xlabel("training CPU time / all patches E epochs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation acc1 (%)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


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
    c = sub.add_parser("collect", help="rebuild the results JSON from the finished runs under --runs")
    c.add_argument("--settings", default=",".join(SETTINGS))
    c.add_argument("--runs", default=str(HERE / ".cache" / "budget_runs"))
    c.set_defaults(func=collect)
    r = sub.add_parser("report", help="tables, regret per budget, the rule's choice and the figure")
    r.add_argument("--settings", default=",".join(s for s in SETTINGS if s not in HELD_OUT),
                   help="default: all but the held-out ones (report --settings tin20b checks the rule on those)")
    r.add_argument("--figure", default=str(HERE.parent / "docs" / "budget-study.png"))
    r.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
