"""Fixed per-step overhead of the real training loop, for two source trees side by side.

    python benchmarks/loop_overhead.py --src before=OLD/src --src after=NEW/src   # default tiny model, batch 32, 1 thread

For each tree (a fresh process with ``PYTHONPATH=TREE``), one epoch of the default job
(``vitpss_tiny_mnist`` on mnist5k, ``--augment none`` so that loading a batch is only indexing
cached tensors, ``--workers 0``, ``--threads 1``) at a fixed keep rate of 1.0 and of 0.2, through
the trainer's own epoch loop (everything a step does: data, keep rate, forward, backward, AdamW, LR,
logging), trees and rates alternated over ``--repeats``. Per step: the process CPU time of the
second epoch (the first fills the loader's cache) / steps (CPU time, not wall time, so that other
load on a shared machine does not count). The part outside the model: that minus the CPU time of
the bare step (``vitpss.timing.time_training_steps``: forward, backward, AdamW on one batch) at
ρ = 0.2 in the same process. The fixed overhead is the intercept of
``time = overhead + c * FLOPs`` through the two rates: ``(t(0.2) - f * t(1)) / (1 - f)`` with
``f = FLOPs(0.2) / FLOPs(1)``, i.e. the part of a ρ = 0.2 step its FLOPs do not explain. Writes JSON
with one row per tree, named by its LABEL (``--src LABEL=TREE``; default: the tree's folder name), not
by a path of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, tempfile, time
import torch
from vitpss.config import TrainConfig, validate
from vitpss.flops import FlopModel
from vitpss.timing import time_training_steps
import vitpss.trainer as T

rate = float(sys.argv[1])
with tempfile.TemporaryDirectory() as out:
    cfg = validate(TrainConfig(schedule="fixed", low=rate, high=1.0, epochs=2, workers=0, threads=1, quiet=True,
                               output=out, amp="off", augment="none"))
    torch.set_num_threads(1)
    trainer = T.Trainer(cfg)
    run_epoch = getattr(trainer, "train_epoch", None) or trainer.run_epoch  # before issue 15: run_epoch
    trainer.open_logs(resuming=False)
    run_epoch(0)  # fills the loader's cache of decoded images
    start, cpu = time.perf_counter(), time.process_time()
    run_epoch(1)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    trainer.close_logs()
    records = [json.loads(line) for line in open(out + "/train_log.jsonl")][trainer.steps_per_epoch:]
    fraction = FlopModel(trainer.model).compute_fraction([rate])
    start = time.process_time()
    isolated = time_training_steps(trainer.model, [rate], batch_size=cfg.batch_size, repeats=len(records))[rate]
    isolated_cpu = (time.process_time() - start) / (len(records) + 1)
print(json.dumps({"steps": len(records), "wall": wall, "cpu": cpu, "isolated_cpu": isolated_cpu, "data": sum(r["data_time"] for r in records),
                  "flop_fraction": fraction}))
"""


def measure(src: str, rate: float) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", WORKER, str(rate)], capture_output=True, text=True, env=env,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def tree_label(spec: str) -> tuple[str, str]:
    """``LABEL=TREE`` or ``TREE`` -> (label, tree); a bare tree is named by its folder (``x/src`` -> ``x``)."""
    if "=" in spec:
        label, tree = spec.split("=", 1)
        return label, tree
    path = Path(spec).resolve()
    return (path.parent.name if path.name == "src" else path.name), spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", required=True, metavar="[LABEL=]TREE",
                        help="a source tree (repeat: compared side by side), named LABEL in the output")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/loop_overhead.json")
    args = parser.parse_args()
    trees = dict(tree_label(spec) for spec in args.src)
    if len(trees) != len(args.src):
        parser.error("two --src trees have the same label: name them, e.g. --src before=OLD/src --src after=NEW/src")
    labels = list(trees)
    samples: dict[str, dict[float, list[float]]] = {label: {1.0: [], 0.2: []} for label in labels}
    isolated: dict[str, list[float]] = {label: [] for label in labels}
    fraction = None
    for repeat in range(args.repeats):
        order = labels if repeat % 2 == 0 else labels[::-1]
        for label in order:
            for rate in (1.0, 0.2):
                m = measure(trees[label], rate)
                samples[label][rate].append(m["cpu"] / m["steps"])
                if rate == 0.2:
                    fraction = m["flop_fraction"]
                    isolated[label].append(m["cpu"] / m["steps"] - m["isolated_cpu"])
    rows = {}
    for src, by_rate in samples.items():
        t1, t02 = (statistics.median(by_rate[r]) for r in (1.0, 0.2))
        rows[src] = {"step_ms_rate_1.0": t1 * 1e3, "step_ms_rate_0.2": t02 * 1e3,
                     "fixed_overhead_ms": (t02 - fraction * t1) / (1 - fraction) * 1e3,
                     "loop_outside_model_ms_rate_0.2": statistics.median(isolated[src]) * 1e3,
                     "samples_ms": {str(r): [v * 1e3 for v in vs] for r, vs in by_rate.items()}}
        print(f"{src}: step {t1 * 1e3:.2f} ms at rate 1.0, {t02 * 1e3:.2f} ms at 0.2 (FLOPs {fraction:.3f} of 1.0), "
              f"fixed overhead {rows[src]['fixed_overhead_ms']:.2f} ms, of which outside forward/backward/AdamW "
              f"{rows[src]['loop_outside_model_ms_rate_0.2']:.2f} ms")
    if len(labels) == 2:
        a, b = (rows[s]["fixed_overhead_ms"] for s in labels)
        print(f"fixed overhead {a:.2f} -> {b:.2f} ms ({(b - a) / a:+.0%})")
    with open(args.json, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "repeats": args.repeats,
                   "flop_fraction_0.2": fraction, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
