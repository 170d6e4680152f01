"""Measured time fraction of real training steps under a schedule vs the same steps at rho=1.

Two identical deit_tiny models with their own AdamW; step t of the schedule arm and step t of the
baseline arm alternate (and which arm goes first alternates), so machine drift hits both alike.
Compare with ``vitpss plan``'s time fraction for the same schedule (docs/cli.md "vitpss plan").

Usage: python benchmarks/plan_check.py STEPS_PER_EPOCH ROUNDS BATCH THREADS   (e.g. 20 3 32 1)
"""
import copy
import json
import statistics
import sys
import time

import timm
import torch

import vitpss

steps_per_epoch, rounds, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
base = vitpss.attach(timm.create_model("deit_tiny_patch16_224", num_classes=10, drop_path_rate=0.1), sampler="magnitude")
sched_model = copy.deepcopy(base)
schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, quantum=0.2, steps_per_epoch=steps_per_epoch, epochs=1)
arms = {"schedule": (sched_model, torch.optim.AdamW(sched_model.parameters(), lr=1e-4)),
        "full": (base, torch.optim.AdamW(base.parameters(), lr=1e-4))}
x = torch.randn(batch, 3, 224, 224); y = torch.randint(0, 10, (batch,))
loss_fn = torch.nn.CrossEntropyLoss()
def step(arm, rate):
    model, opt = arms[arm]
    vitpss.set_keep_rate(model, rate)
    t = time.perf_counter()
    loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t
step("schedule", 1.0); step("full", 1.0)  # warm-up
ratios = []
for r in range(rounds):
    tot = {"schedule": 0.0, "full": 0.0}
    for t in range(schedule.total_steps):
        order = ["schedule", "full"] if (t + r) % 2 == 0 else ["full", "schedule"]
        for arm in order:
            tot[arm] += step(arm, schedule(t) if arm == "schedule" else 1.0)
    ratios.append(tot["schedule"] / tot["full"])
    print(json.dumps({"round": r, "schedule_s": round(tot["schedule"], 2), "full_s": round(tot["full"], 2), "ratio": round(ratios[-1], 4)}), flush=True)
print(json.dumps({"steps": schedule.total_steps, "levels": schedule.levels(), "mean_keep_rate": schedule.mean_keep_rate(),
                  "ratios": [round(v, 4) for v in ratios], "median_ratio": round(statistics.median(ratios), 4),
                  "threads": torch.get_num_threads()}))
