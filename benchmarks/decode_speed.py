"""Images/s decoded and augmented (random-resized crop + flip, ``--augment light``) at ``--img-size``:
JPEG decoding in the CPU loader workers vs on the device (``--decode gpu``).

    python benchmarks/decode_speed.py --device cuda --workers 8          # on a GPU machine
    python benchmarks/decode_speed.py --device cpu --workers 0 --images 64 --batches 2   # smoke run

Writes ``--images`` JPEGs of ``--width`` x ``--height`` (ImageNet's typical 500x375, quality 90) as an
ImageFolder in a temporary directory, then times ``--batches`` batches of the training loader
(after one warm-up batch) for each path, device-synchronised. Writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitpss.config import TrainConfig
from vitpss.data import build_datasets, build_loader


def write_jpegs(root: Path, images: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
    for split, count in (("train", images), ("val", 2)):
        for label in range(2):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count // 2):
                pixels = np.roll(base, i, axis=1) // (label + 1)
                Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)


def epochs(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def images_per_s(cfg: TrainConfig, device: torch.device, batches: int) -> float:
    train, *_ = build_datasets(cfg)
    loader = build_loader(train, cfg, True, device=device)
    seen, start = 0, 0.0
    for step, (x, _) in enumerate(epochs(loader)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step == 0:
            start = time.perf_counter()  # after the warm-up batch (worker start, nvJPEG set-up)
        else:
            seen += len(x)
        if step == batches:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--json", default="benchmarks/results/decode_speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images, args.width, args.height)
        result = {"command": "python benchmarks/decode_speed.py " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        for decode in ("cpu", "gpu"):
            cfg = TrainConfig(data=tmp, img_size=args.img_size, in_chans=3, in_memory="off", augment="light",
                              workers=args.workers, batch_size=min(args.batch_size, args.images), decode=decode,
                              quiet=True)
            result[f"decode_{decode}_images_per_s"] = images_per_s(cfg, device, args.batches)
            print(f"--decode {decode}: {result[f'decode_{decode}_images_per_s']:.0f} images/s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
