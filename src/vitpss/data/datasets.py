"""Datasets the loader indexes: decoded uint8 images in memory, or a source with a per-image transform.

Keys are indices or ``(index, sample_seed)`` pairs; both can serve uint8 images to the device
prefetcher (``uint8_view``).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..seeding import seeded_rng
from .augment import BatchPadCrop, BatchRandomResizedCrop, TensorRandAugment
from .gpu_decode import EncodedImages

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

    def encoded_view(self) -> "EncodedImages | None":
        """The same images undecoded, for ``--decode gpu`` (:class:`~vitpss.data.gpu_decode.EncodedImages`:
        the device decodes and crops them); None unless the source reads files (``encoded``)."""
        if self.uint8_transform is None or self.normalization is None or not hasattr(self.source, "encoded"):
            return None
        return EncodedImages(self.source, self.uint8_transform, self.normalization, self.erase_probability)

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
