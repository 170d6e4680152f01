"""Transforms: timm's per-image pipelines and the batched tensor augmentations of in-memory data.

Each random choice is a pure function of the sample seed (:class:`~vitpss.data.loader.EpochSampler`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from ..config import TrainConfig
from ..prefetch import random_erase_
from ..seeding import seeded_rng, seeded_uniforms
from .sources import MNIST_MEAN, MNIST_STD, data_kind

RANDAUG_ERASE_PROBABILITY = 0.25  # DeiT's random erasing, part of --augment randaug


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
