"""``build_datasets``: the train and validation datasets of a training config, from any source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..errors import UsageError
from .augment import (RANDAUG_ERASE_PROBABILITY, BatchPadCrop, BatchRandomResizedCrop, TensorRandAugment,
                      _normalisation, build_transform, hflip_probability, light_crop)
from .datasets import InMemoryDataset, TransformedDataset
from .hf import HFImages, columns, load_splits
from .shards import ShardImages, index_shards, shard_paths
from .sources import (CIFAR10_CLASSES, DATA_DEFAULTS, MNIST_TRAIN_SIZE, ArrayImages, FolderImages,
                      SyntheticImages, data_kind, decode_folder, default_data_root, image_sizes, load_cifar10,
                      load_mnist5k, per_class_subset, scan_image_folder, to_uint8_tensor)

#: ``--in-memory auto`` holds an ImageFolder in memory when its decoded uint8 pixels stay under this.
IN_MEMORY_LIMIT_BYTES = 4 << 30


def _in_memory_datasets(cfg: TrainConfig, kind: str, train: tuple[torch.Tensor, np.ndarray],
                        val: tuple[torch.Tensor, np.ndarray], classes: Sequence[str],
                        img_size: int, in_chans: int) -> tuple[Dataset, Dataset]:
    mean, std = _normalisation(kind, in_chans)
    crop: Callable | None = None
    if cfg.augment in ("pad-crop", "randaug"):
        crop = BatchPadCrop(pad=max(1, round(train[0].shape[-1] / 8)), hflip=hflip_probability(cfg))
    elif cfg.augment == "light":
        crop = BatchRandomResizedCrop(**light_crop(cfg))
    randaug = TensorRandAugment() if cfg.augment == "randaug" else None
    common = {"img_size": img_size, "mean": mean, "std": std}
    return (InMemoryDataset(*train, classes, crop=crop, randaug=randaug, **common),
            InMemoryDataset(*val, classes, **common))


def _folder_in_memory(cfg: TrainConfig, samples: Sequence[tuple[str, int]], in_chans: int) -> bool:
    """Whether ``--in-memory`` holds this ImageFolder in memory (``auto``: one image size, under the limit)."""
    if cfg.in_memory == "off" or (cfg.in_memory == "auto" and cfg.decode == "gpu"):
        return False
    if cfg.in_memory == "auto":  # too large at the first image's size: no need to read every header
        first = next(iter(image_sizes(samples, stop_at=1)), (0, 0))
        if len(samples) * first[0] * first[1] * in_chans > IN_MEMORY_LIMIT_BYTES:
            return False
    sizes = image_sizes(samples)
    if len(sizes) > 1:
        if cfg.in_memory == "on":
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise UsageError(f"--in-memory on needs images of one size, but --data {cfg.data} has {len(sizes)} "
                             f"sizes ({shown}, ...): resize them, or pass --in-memory off")
        return False
    width, height = next(iter(sizes), (0, 0))
    return cfg.in_memory == "on" or len(samples) * width * height * in_chans <= IN_MEMORY_LIMIT_BYTES


def _subset(samples: Sequence[tuple[str, int]], per_class: int | None) -> np.ndarray:
    return per_class_subset(np.asarray([label for _, label in samples], dtype=np.int64), per_class)


def _shard_sources(cfg: TrainConfig, in_chans: int) -> tuple[list[str], list[FolderImages]]:
    paths = [shard_paths(cfg.data, split, pattern) for split, pattern in (("train", cfg.train_split),
                                                                         ("val", cfg.val_split))]
    indexed = [index_shards(p, cfg.on_bad_image) for p in paths]
    if not any((paths[0][0].parent / n).is_file() for n in ("_info.json", "info.json")):
        print(f"vitpss: --data {cfg.data}: no _info.json; counted {len(indexed[0][0])} train and "
              f"{len(indexed[1][0])} val samples from the tar headers of {len(paths[0]) + len(paths[1])} shards",
              file=sys.stderr, flush=True)
    for split, (samples, _) in zip(("train", "val"), indexed):
        if not samples:
            raise UsageError(f"--data {cfg.data}: the {split} shards hold no readable samples")
    classes = [str(c) for c in range(1 + max(label for _, label in indexed[0][0]))]
    sources: list[FolderImages] = []
    for (samples, where), shards, per_class in zip(indexed, paths, (cfg.train_subset, cfg.val_subset)):
        keep = _subset(samples, per_class)
        sources.append(ShardImages([samples[i] for i in keep], [where[i] for i in keep], shards, in_chans,
                                   cfg.on_bad_image))
    return classes, sources


def _hf_sources(cfg: TrainConfig, in_chans: int) -> tuple[list[str], list[FolderImages]]:
    splits = load_splits(cfg.data, cfg.train_split, cfg.val_split, cfg.image_column, cfg.data_root)
    classes: list[str] = []
    sources: list[FolderImages] = []
    for (name, ds), flag, per_class in zip(splits, ("--train-split", "--val-split"), (cfg.train_subset, cfg.val_subset)):
        ds, labels, names = columns(ds, cfg.data, name, cfg.image_column, cfg.label_column, flag)
        if not len(labels):
            raise UsageError(f"--data {cfg.data}: split {name!r} has no rows")
        if not sources:
            classes = names or [str(c) for c in range(1 + int(labels.max()))]
        rows = per_class_subset(labels, per_class)
        sources.append(HFImages(ds, rows, labels[rows], cfg.image_column, name, in_chans, cfg.on_bad_image))
    return classes, sources


def _disk_sources(cfg: TrainConfig, kind: str, in_chans: int) -> tuple[list[str], FolderImages, FolderImages]:
    """Classes and the train and validation images (``--*-subset`` applied) of an ImageFolder, WebDataset
    shards or a Hugging Face dataset."""
    if kind != "folder" and cfg.in_memory == "on":
        raise UsageError(f"--in-memory on holds an ImageFolder in memory; --data {cfg.data} is read image by image: "
                         f"drop --in-memory")
    if kind == "wds":
        classes, sources = _shard_sources(cfg, in_chans)
    elif kind == "hf":
        classes, sources = _hf_sources(cfg, in_chans)
    else:
        classes, train_samples, val_samples = scan_image_folder(cfg.data, cfg.on_bad_image)
        sources = [FolderImages([samples[i] for i in _subset(samples, per_class)], in_chans, cfg.on_bad_image)
                   for samples, per_class in ((train_samples, cfg.train_subset), (val_samples, cfg.val_subset))]
    if len(classes) < 2:
        shown = f" ({classes[0]!r})" if classes else ""
        raise UsageError(f"--data {cfg.data}: found {len(classes)} class{shown}; a classifier needs at least 2")
    beyond = [label for _, label in sources[1].samples if label >= len(classes)]
    if beyond:
        raise UsageError(f"--data {cfg.data}: a validation sample has class {beyond[0]}, but the training data has "
                         f"{len(classes)} classes (0..{len(classes) - 1})")
    return classes, sources[0], sources[1]


def build_datasets(cfg: TrainConfig, *, with_train: bool = True) -> tuple[Dataset | None, Dataset, int, int, int]:
    """``(train_ds, val_ds, num_classes, in_chans, img_size)`` for ``cfg.data``.

    Images are prepared for ``cfg.in_chans`` channels and ``cfg.img_size`` pixels, or, where those
    are ``None``, for the data's own defaults (:data:`DATA_DEFAULTS`), which are returned. Datasets
    yield ``(image tensor, label)``. Bad data raises UsageError. ``with_train=False`` (evaluation
    only) returns ``None`` for ``train_ds`` and decodes no training image.
    """
    train_ds, *rest = _build_datasets(cfg, with_train)
    return (train_ds if with_train else None, *rest)


def _build_datasets(cfg: TrainConfig, with_train: bool) -> tuple[Dataset, Dataset, int, int, int]:
    kind = data_kind(cfg.data)
    default_chans, default_size = DATA_DEFAULTS[kind]
    in_chans = cfg.in_chans or default_chans
    img_size = cfg.img_size or default_size
    if kind == "synthetic":
        num_classes = cfg.num_classes or 10
        val_size = max(1, min(1024, cfg.synthetic_size // 4))
        classes = [str(i) for i in range(num_classes)]
        train_src = SyntheticImages(cfg.synthetic_size, in_chans, img_size, num_classes, cfg.seed)
        val_src = SyntheticImages(val_size, in_chans, img_size, num_classes, cfg.seed, offset=cfg.synthetic_size)
        return (TransformedDataset(train_src, None, classes), TransformedDataset(val_src, None, classes),
                num_classes, in_chans, img_size)
    memory: tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None
    if kind == "mnist5k":
        images, labels = load_mnist5k()
        order = np.random.default_rng(0).permutation(len(images))
        train_idx, val_idx = order[:MNIST_TRAIN_SIZE], order[MNIST_TRAIN_SIZE:]
        train_idx = train_idx[per_class_subset(labels[train_idx], cfg.train_subset)]
        val_idx = val_idx[per_class_subset(labels[val_idx], cfg.val_subset)]
        classes = [str(i) for i in range(10)]
        train_src = ArrayImages(images[train_idx], labels[train_idx], in_chans)
        val_src = ArrayImages(images[val_idx], labels[val_idx], in_chans)
    elif kind == "cifar10":
        root = Path(cfg.data_root).expanduser() if cfg.data_root else default_data_root() / "cifar10"
        train_x, train_y, val_x, val_y = load_cifar10(root)
        classes = list(CIFAR10_CLASSES)
        keep_train, keep_val = per_class_subset(train_y, cfg.train_subset), per_class_subset(val_y, cfg.val_subset)
        memory = ((to_uint8_tensor(train_x[keep_train], in_chans), train_y[keep_train]),
                  (to_uint8_tensor(val_x[keep_val], in_chans), val_y[keep_val]))
    else:
        classes, train_src, val_src = _disk_sources(cfg, kind, in_chans)
        if kind == "folder" and _folder_in_memory(cfg, train_src.samples + val_src.samples, in_chans):
            progress = not cfg.quiet
            train_memory = ((decode_folder(train_src, "decoding train/", progress),
                             np.asarray([y for _, y in train_src.samples])) if with_train else None)
            val_memory = (decode_folder(val_src, "decoding val/", progress), np.asarray([y for _, y in val_src.samples]))
            memory = (train_memory or val_memory, val_memory)  # without train/: val/ stands in, then is dropped
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise UsageError(f"--num-classes={cfg.num_classes} but --data {cfg.data} has {len(classes)} classes: "
                         f"drop --num-classes (it is read from the data)")
    if memory is not None:
        return (*_in_memory_datasets(cfg, kind, *memory, classes, img_size, in_chans), len(classes), in_chans, img_size)
    if kind in ("folder", "wds", "hf"):  # decoded per image; uint8 views for the device (see TransformedDataset.uint8_view)
        device_side = {"normalization": _normalisation(kind, in_chans)}
        train_ds = TransformedDataset(
            train_src, build_transform(cfg, True, img_size, in_chans), classes, **device_side,
            uint8_transform=build_transform(cfg, True, img_size, in_chans, uint8=True),
            erase_probability=RANDAUG_ERASE_PROBABILITY if cfg.augment == "randaug" else 0.0)
        val_ds = TransformedDataset(val_src, build_transform(cfg, False, img_size, in_chans), classes, **device_side,
                                    uint8_transform=build_transform(cfg, False, img_size, in_chans, uint8=True))
        return train_ds, val_ds, len(classes), in_chans, img_size
    # mnist5k: the small embedded set's deterministic transforms are cached, as normalised floats
    if cfg.augment == "light":  # the cached images, cropped a batch at a time (see BatchRandomResizedCrop)
        train_ds = TransformedDataset(train_src, build_transform(cfg, False, img_size, in_chans), classes,
                                      cache=True, batch_augment=BatchRandomResizedCrop(**light_crop(cfg)))
    else:
        train_ds = TransformedDataset(train_src, build_transform(cfg, True, img_size, in_chans), classes,
                                      cache=cfg.augment == "none")
    val_ds = TransformedDataset(val_src, build_transform(cfg, False, img_size, in_chans), classes, cache=True)
    return train_ds, val_ds, len(classes), in_chans, img_size
