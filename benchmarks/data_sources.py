"""The same images as an ImageFolder, as WebDataset shards and as a saved Hugging Face dataset: loader speed
and training accuracy per epoch.

    python benchmarks/data_sources.py --root /path/to/cifar10-jpeg   # ROOT/{train,val}/<class>/*.jpg

A fixed per-class subset of ROOT (``--per-class``, ``--val-per-class``; the choice of
``--train-subset``) is written three ways under ``--work``, in the same sample order: an ImageFolder
(copies), ``train-*.tar``/``val-*.tar`` shards (``--shard-size`` samples each) and a
``DatasetDict.save_to_disk`` folder. Then
- loader: images/s of one training epoch of ``build_loader`` (``--augment light``, ``--workers``,
  decoding on the CPU, the device prefetcher on the CPU), sources alternated, median of ``--repeats``;
- training: ``vitpss train`` from each source with the same seed (a small ViT at 32 px), validation
  acc1 per epoch.
Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitpss.checkpoint import read_jsonl
from vitpss.config import TrainConfig
from vitpss.data import build_datasets, build_loader, per_class_subset, scan_image_folder

SOURCES = ("folder", "shards", "hf")
MODEL = ["--img-size", "32", "--patch-size", "4", "--in-chans", "3", "--embed-dim", "64", "--depth", "4",
         "--num-heads", "4"]


def subset(samples: list[tuple[str, int]], per_class: int) -> list[tuple[str, int]]:
    labels = torch.tensor([label for _, label in samples]).numpy()
    return [samples[i] for i in per_class_subset(labels, per_class)]


def write_sources(root: Path, work: Path, per_class: int, val_per_class: int,
                  shard_size: int) -> tuple[dict[str, Path], dict[str, int]]:
    """The subset of ``root`` as an ImageFolder (copies), WebDataset shards and a saved HF dataset."""
    import datasets
    import webdataset as wds

    classes, train, val = scan_image_folder(root)
    splits = {"train": subset(train, per_class), "val": subset(val, val_per_class)}
    paths = {name: work / name for name in SOURCES}
    paths["shards"].mkdir(parents=True)
    for split, samples in splits.items():
        for start in range(0, len(samples), shard_size):
            with wds.TarWriter(str(paths["shards"] / f"{split}-{start // shard_size:06d}.tar")) as sink:
                for i, (path, label) in enumerate(samples[start:start + shard_size], start):
                    sink.write({"__key__": f"{i:07d}", "jpg": Path(path).read_bytes(), "cls": label})
        for path, label in samples:
            copy = paths["folder"] / split / classes[label] / Path(path).name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"image": [{"bytes": Path(p).read_bytes(), "path": None} for p, _ in samples],
                                          "label": [label for _, label in samples]}, features=features)
        for name, samples in (("train", splits["train"]), ("validation", splits["val"]))}).save_to_disk(str(paths["hf"]))
    return paths, {split: len(samples) for split, samples in splits.items()}


def loader_speed(paths: dict[str, Path], workers: int, batch_size: int, repeats: int) -> dict[str, list[float]]:
    """Images/s of one training epoch per source, sources alternated ``repeats`` times after a warm-up epoch."""
    loaders = {}
    for name, path in paths.items():
        cfg = TrainConfig(data=str(path), img_size=32, in_chans=3, in_memory="off", workers=workers, augment="light",
                          batch_size=batch_size, quiet=True)
        train, *_ = build_datasets(cfg)
        loaders[name] = build_loader(train, cfg, True, device=torch.device("cpu"))
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    for epoch in range(repeats + 1):
        for name, loader in loaders.items():
            loader.sampler.set_epoch(epoch)
            start, images = time.perf_counter(), 0
            for x, _ in loader:
                images += len(x)
            if epoch:  # epoch 0 warms the page cache and starts the workers
                speeds[name].append(images / (time.perf_counter() - start))
    return speeds


def train_curves(paths: dict[str, Path], work: Path, epochs: int, batch_size: int) -> dict[str, dict]:
    runs = {}
    for name, path in paths.items():
        out = work / f"run-{name}"
        command = [sys.executable, "-m", "vitpss", "train", "--data", str(path), *MODEL, "--epochs", str(epochs),
                   "--batch-size", str(batch_size), "--in-memory", "off", "--workers", "0", "--threads", "1",
                   "--seed", "0", "--quiet", "--output", str(out), "--overwrite"]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        summary = json.loads((out / "summary.json").read_text())
        runs[name] = {"acc1": [r["acc1"] for r in read_jsonl(out / "val_log.jsonl")],
                      "train_time_s": summary["train_time_s"]}
    return runs


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="ImageFolder with train/ and val/ (JPEG images)")
    parser.add_argument("--work", default="/tmp/vitpss-data-sources", help="where the three copies are written")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/data_sources.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if work.exists():
        sys.exit(f"{work} exists: remove it or pass --work DIR")
    paths, counts = write_sources(Path(args.root), work, args.per_class, args.val_per_class, args.shard_size)
    speeds = loader_speed(paths, args.workers, args.batch_size, args.repeats)
    runs = train_curves(paths, work, args.epochs, args.batch_size)
    print(f"{'source':8} {'loader images/s (median)':>25}  acc1 per epoch")
    for name in SOURCES:
        curve = " ".join(f"{a:5.1f}" for a in runs[name]["acc1"])
        print(f"{name:8} {statistics.median(speeds[name]):25.0f}  {curve}")
    result = {"command": " ".join(["python", *sys.argv]).replace(args.root, "ROOT"), "machine": f"{cpu_name()}, {os.cpu_count()} CPUs visible, "
              f"load average {os.getloadavg()[0]:.1f} at the end", "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "workers": args.workers,
              "images": counts, "loader_images_per_s": speeds,
              "loader_median": {n: statistics.median(s) for n, s in speeds.items()}, "train": runs,
              "same_curve": len({tuple(r["acc1"]) for r in runs.values()}) == 1}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"same accuracy curve from all sources: {result['same_curve']}; wrote {args.json}")


if __name__ == "__main__":
    main()
