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


def folder_to_shards(root: Path, out: Path, per_shard: int = 5) -> Path:
    """The ImageFolder ``root`` as WebDataset shards ``out/{train,val}-NNNNNN.tar`` (KEY.png + KEY.cls)."""
    import webdataset as wds

    from vitpss.data import scan_image_folder

    out.mkdir(parents=True, exist_ok=True)
    _, train, val = scan_image_folder(root)
    for split, samples in (("train", train), ("val", val)):
        for start in range(0, len(samples), per_shard):
            with wds.TarWriter(str(out / f"{split}-{start // per_shard:06d}.tar")) as sink:
                for i, (path, label) in enumerate(samples[start:start + per_shard], start):
                    sink.write({"__key__": f"{i:06d}", Path(path).suffix[1:]: Path(path).read_bytes(), "cls": label})
    return out


def folder_to_hf(root: Path, out: Path, val_name: str = "validation") -> Path:
    """The ImageFolder ``root`` saved with ``DatasetDict.save_to_disk`` (columns image, label: ClassLabel)."""
    import datasets

    from vitpss.data import scan_image_folder

    classes, train, val = scan_image_folder(root)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {name: datasets.Dataset.from_dict(
        {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p, _ in samples],
         "label": [label for _, label in samples]}, features=features)
        for name, samples in (("train", train), (val_name, val))}
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out
