"""Shared fixtures of the train/eval tests: tiny ImageFolder trees and tiny, fast run flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A tiny ViT (16 px, patch 4: 16 patches, width 32, depth 2) that trains a step in milliseconds.
TINY_MODEL = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2"]
QUIET = ["--quiet", "--workers", "0", "--threads", "1"]


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 8, val_per_class: int = 2,
                      modes=("L", "RGB", "P", "RGBA"), size: int = 20) -> Path:
    """``root/{train,val}/<class>/<i>.png`` with mixed Pillow modes; class ``c`` has brightness ``c``."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 60 + 150 * label).astype(np.uint8)
                img = Image.fromarray(pixels, "RGB")
                mode = modes[i % len(modes)]
                img = img.convert(mode) if mode != "P" else img.quantize(16)
                img.save(folder / f"{i}.png")
    return root


def tiny_run(output: Path, *extra: str, data: str = "synthetic", epochs: int = 2) -> list[str]:
    """Arguments of a ``vitpss train`` run that takes a few seconds on a loaded 2-core CPU."""
    args = ["train", "--output", str(output), "--data", data, "--epochs", str(epochs), "--batch-size", "8",
            *TINY_MODEL, *QUIET]
    if data == "synthetic":
        args += ["--synthetic-size", "32", "--in-chans", "1"]
    return args + list(extra)
