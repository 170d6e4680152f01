"""The GPU check of issue 14: every GPU-only path of vitpss, run once, results as JSON.

    python benchmarks/gpu_check.py                        # writes benchmarks/results/gpu/*.json
    python benchmarks/gpu_check.py --only beit_memory     # one part

Parts (each a subprocess with its own time limit; a failing part does not stop the others):

* ``step_cost``: step time and peak memory per keep rate, bf16 autocast (benchmarks/step_cost.py).
* ``schedule_speed``: cyclic PSS vs all patches end to end with bf16, efficiency = ideal / measured
  (benchmarks/schedule_speed.py; target >= 0.95 on a GPU).
* ``fp16_resume``: ``vitpss train --amp fp16 --clip-grad 1`` (GradScaler, unscale + clip) stopped
  with ``--max-steps`` and resumed, against the same run uninterrupted: the per-step losses after
  the resume point must match.
* ``compile``: ``vitpss train --compile`` (inductor, one graph per keep rate) for a ViT and a BEiT
  (the relative-position-bias attention under torch.compile).
* ``beit_memory``: BEiT vs ViT peak memory (``max_memory_allocated``) and step time per keep rate,
  bias lookup vs the previous per-sample bias (benchmarks/beit_memory.py).
* ``prefetch``: the device prefetcher on CUDA (pinned uint8 batches, side stream, normalisation
  and random erasing on the GPU) gives the batches the CPU path gives: in-memory and on-disk
  ImageFolders, ``pad-crop`` (equal to 1e-5) and ``randaug`` (the same erased boxes).

Writes one JSON per part plus ``gpu_check.json`` (commands, exit codes, seconds, checks). On a
machine without CUDA it prints one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

PY = sys.executable
BENCH = Path(__file__).resolve().parent
TINY_SYNTHETIC = ["--data", "synthetic", "--synthetic-size", "2048", "--batch-size", "64", "--quiet", "--overwrite"]


def run(cmd: list[str], timeout: int) -> dict:
    """Run ``cmd``; its exit code, seconds and the tail of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = "timeout", (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1), "tail": out[-2000:]}


def losses(run_dir: Path) -> dict[int, float]:
    records = (json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip())
    return {r["step"]: r["loss"] for r in records}


def step_cost(out: Path, work: Path) -> dict:
    return {"runs": [run([PY, str(BENCH / "step_cost.py"), "--device", "cuda", "--amp", "--json",
                          str(out / "step_cost.json")], 900)]}


def schedule_speed(out: Path, work: Path) -> dict:
    cmd = [PY, str(BENCH / "schedule_speed.py"), "--device", "cuda", "--amp", "bf16", "--images", "4096",
           "--batch-size", "128", "--repeats", "1", "--cache", str(work / "jpeg224"),
           "--json", str(out / "schedule_speed.json")]
    result = {"runs": [run(cmd, 1500)]}
    path = out / "schedule_speed.json"
    if path.exists():
        data = json.loads(path.read_text())
        result["efficiency"] = data.get("efficiency")
        result["target_met"] = data.get("efficiency") is not None and data["efficiency"] >= 0.95
    return result


def fp16_resume(out: Path, work: Path) -> dict:
    base = [PY, "-m", "vitpss", "train", "--model", "deit_tiny_patch16_224", "--img-size", "64", "--device", "cuda",
            "--amp", "fp16", "--clip-grad", "1.0", "--epochs", "2", "--seed", "0", *TINY_SYNTHETIC]
    whole, parts = work / "fp16_whole", work / "fp16_parts"
    runs = [run(base + ["--output", str(whole)], 600),
            run(base + ["--output", str(parts), "--max-steps", "40"], 600),
            run([PY, "-m", "vitpss", "train", "--resume", str(parts), "--quiet"], 600)]
    result = {"runs": runs}
    if all(r["rc"] == 0 for r in runs):
        a, b = losses(whole), losses(parts)
        after = [s for s in a if s >= 40]
        result["steps_compared"] = len(after)
        result["max_loss_diff_after_resume"] = max(abs(a[s] - b[s]) for s in after) if after else None
        result["ok"] = bool(after) and set(a) == set(b) and result["max_loss_diff_after_resume"] < 1e-3
    (out / "fp16_resume.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def compile_runs(out: Path, work: Path) -> dict:
    runs = []
    for name, model in (("vit", ["--model", "deit_tiny_patch16_224", "--img-size", "64"]),
                        ("beit", ["--model", "beit_base_patch16_224", "--img-size", "64", "--embed-dim", "192",
                                  "--depth", "4", "--num-heads", "3"])):
        runs.append(run([PY, "-m", "vitpss", "train", *model, "--device", "cuda", "--amp", "bf16", "--compile",
                         "--epochs", "2", "--schedule", "cyclic", "--low", "0.2", *TINY_SYNTHETIC,
                         "--output", str(work / f"compile_{name}")], 1200))
    result = {"runs": runs, "ok": all(r["rc"] == 0 for r in runs)}
    (out / "compile.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def beit_memory(out: Path, work: Path) -> dict:
    cmd = [PY, str(BENCH / "beit_memory.py"), "--device", "cuda", "--amp", "--steps", "10",
           "--json", str(out / "beit_memory.json")]
    return {"runs": [run(cmd, 1200)]}


PREFETCH_CHECK = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
from vitpss.config import TrainConfig
from vitpss.data import build_datasets, build_loader

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, count in (("train", 64), ("val", 16)):
    for i in range(count):
        folder = root / split / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
checks = {}
for in_memory in ("on", "off"):
    for augment in ("pad-crop", "randaug"):
        cfg = TrainConfig(data=str(root), img_size=32, batch_size=16, augment=augment, in_memory=in_memory, workers=2,
                          quiet=True)
        train, *_ = build_datasets(cfg)
        batches = {}
        for device in ("cpu", "cuda"):
            loader = build_loader(train, cfg, True, device=torch.device(device))
            loader.sampler.set_epoch(1)
            batches[device] = [(x.cpu(), y.cpu()) for x, y in loader]
        diffs = [(a - b).abs() for (a, _), (b, _) in zip(batches["cpu"], batches["cuda"])]
        labels = all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(batches["cpu"], batches["cuda"]))
        # erased pixels hold noise from each device's own generator: compare where both are unerased
        same = [float((d < 1e-4).float().mean()) for d in diffs]
        checks[f"{in_memory}-{augment}"] = {"labels_equal": labels, "share_equal_pixels": min(same),
                                            "max_diff": max(float(d.max()) for d in diffs)}
ok = all(c["labels_equal"] for c in checks.values()) and all(
    c["max_diff"] < 1e-4 for k, c in checks.items() if k.endswith("pad-crop"))
print(json.dumps({"checks": checks, "ok": ok}))
"""


def prefetch(out: Path, work: Path) -> dict:
    result = {"runs": [run([PY, "-c", PREFETCH_CHECK, str(work / "prefetch_data")], 600)]}
    if result["runs"][0]["rc"] == 0:
        result.update(json.loads(result["runs"][0]["tail"].strip().splitlines()[-1]))
    (out / "prefetch.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


PARTS: dict[str, Callable[[Path, Path], dict]] = {
    "prefetch": prefetch, "step_cost": step_cost, "schedule_speed": schedule_speed, "fp16_resume": fp16_resume,
    "compile": compile_runs, "beit_memory": beit_memory,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="vitpss_gpu_check_") as tmp:
        for name in args.only or PARTS:
            print(f"gpu_check: {name} ...", flush=True)
            result = PARTS[name](args.out, Path(tmp))
            summary["parts"][name] = result
            rcs = [r["rc"] for r in result["runs"]]
            print(f"gpu_check: {name}: exit codes {rcs}" + (f", ok={result['ok']}" if "ok" in result else ""), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'}")
    failed = [n for n, r in summary["parts"].items() if any(x["rc"] != 0 for x in r["runs"]) or r.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
