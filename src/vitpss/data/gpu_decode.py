"""``--decode gpu``: the loader carries undecoded JPEGs; the device decodes, crops, resizes and flips them.

Loader workers only read each file and its header (:class:`EncodedImages`): they replay the random
draws of the CPU path's timm transform (random-resized crop box, flip) under the sample's seed, from
the image size in the header, so a sample gets the same crop on either path and a resumed run the
same pixels. :class:`DeviceDecode` then decodes the batch with ``torchvision.io.decode_jpeg`` on the
device (nvJPEG on CUDA) and applies each crop with torchvision's tensor functions (bilinear,
antialiased, as Pillow's resize). Evaluation is the CPU path's resize and centre crop.

Images that are no baseline JPEG in L or RGB (PNG, CMYK JPEG, ...) are decoded by the worker on the
CPU and cropped on the device the same way. A file whose header cannot be read is skipped and
counted as on the CPU path; a JPEG whose header reads but whose data is damaged is decoded as far
as libjpeg/nvJPEG gets (it is not counted).
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from ..seeding import seeded_rng
from .sources import FolderImages, to_channels

#: Transforms of the CPU path that draw nothing or that the device repeats.
_DETERMINISTIC = (T.Resize, T.CenterCrop, T.ColorJitter)
NO_CROP = (-1, -1, -1, -1, 0)  # evaluation: the device resizes and centre-crops


def _steps(transform: Any) -> list[Any]:
    return list(getattr(transform, "transforms", [transform]))


def crop_plan(transform: Any, image: Image.Image) -> tuple[int, int, int, int, int]:
    """``(top, left, height, width, flip)`` that ``transform`` (a timm train transform: random-resized
    crop, flip) draws for ``image`` under the current RNG state; :data:`NO_CROP` for deterministic ones."""
    box, flip = None, 0
    for step in _steps(transform):
        if isinstance(step, RandomResizedCropAndInterpolation):
            box = step.get_params(image, step.scale, step.ratio)
        elif isinstance(step, T.RandomHorizontalFlip):
            flip = int(torch.rand(1) < step.p)
    return (*box, flip) if box is not None else NO_CROP


def check_transform(transform: Any) -> None:
    """ValueError unless the device can repeat ``transform`` (crop, flip, resize, centre crop only)."""
    for step in _steps(transform):
        known = isinstance(step, (RandomResizedCropAndInterpolation, T.RandomHorizontalFlip, *_DETERMINISTIC))
        if not known and type(step).__name__ not in ("MaybePILToTensor", "PILToTensor"):
            raise ValueError(f"--decode gpu cannot repeat {type(step).__name__} on the device")
        if isinstance(step, T.ColorJitter) and any(v is not None for v in (step.brightness, step.contrast,
                                                                          step.saturation, step.hue)):
            raise ValueError("--decode gpu cannot repeat ColorJitter on the device")


class EncodedImages(Dataset):
    """A source's images served undecoded: ``(payload, label, seed, crop)`` where ``payload`` is the
    JPEG file as a 1-D uint8 tensor (or, for other images, the decoded ``(C, H, W)`` uint8 tensor),
    and ``crop`` the :func:`crop_plan` the sample's seed draws. Keys as
    :class:`~vitpss.data.datasets.TransformedDataset`'s."""

    def __init__(self, source: FolderImages, transform: Any, normalization: tuple[Sequence[float], Sequence[float]],
                 erase_probability: float = 0.0) -> None:
        check_transform(transform)
        self.source, self.transform, self.normalization = source, transform, normalization
        self.erase_probability = erase_probability

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: int) -> tuple[torch.Tensor, Image.Image]:
        data = self.source.encoded(index)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # the header only
            if image.format == "JPEG" and image.mode == ("L" if self.source.in_chans == 1 else "RGB"):
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), image
            image.load()
        pixels = torch.from_numpy(np.asarray(to_channels(image, self.source.in_chans)).copy())
        return (pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)).contiguous(), image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        (payload, image), label = self.source.fetch(index, self.read)
        if seed is None:
            return payload, label, -1, torch.tensor(NO_CROP)
        with seeded_rng(seed):
            plan = crop_plan(self.transform, image)
        return payload, label, seed, torch.tensor(plan)

    @staticmethod
    def collate(batch: Sequence[tuple[torch.Tensor, int, int, torch.Tensor]]) -> list[Any]:
        """Payloads stay a list (their sizes differ); labels, seeds and crops are stacked."""
        payloads, labels, seeds, crops = zip(*batch)
        return [list(payloads), torch.tensor(labels), torch.tensor(seeds), torch.stack(crops)]


class DeviceDecode:
    """Decodes a batch of :class:`EncodedImages` payloads on ``device`` and crops each image to
    ``size`` pixels: the random-resized crop box and flip of its plan, or (no plan) the CPU path's
    resize of the shorter side to ``resize`` and centre crop. Returns ``(N, C, size, size)`` uint8."""

    def __init__(self, device: torch.device, size: int, resize: int, in_chans: int) -> None:
        from torchvision.io import ImageReadMode

        self.device, self.size, self.resize = torch.device(device), size, resize
        self.mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB

    @classmethod
    def for_transform(cls, device: torch.device, transform: Any, in_chans: int) -> "DeviceDecode":
        size = resize = None
        for step in _steps(transform):
            if isinstance(step, (RandomResizedCropAndInterpolation, T.CenterCrop)):
                size = step.size[0] if isinstance(step.size, (tuple, list)) else step.size
            elif isinstance(step, T.Resize):
                resize = step.size[0] if isinstance(step.size, (tuple, list)) else step.size
        return cls(device, size, resize or size, in_chans)

    def __call__(self, payloads: Sequence[torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
        from torchvision.io import decode_jpeg

        jpeg = [i for i, p in enumerate(payloads) if p.ndim == 1]
        images: list[Any] = [None] * len(payloads)
        if jpeg:
            decoded = decode_jpeg([payloads[i] for i in jpeg], mode=self.mode, device=self.device)
            for i, img in zip(jpeg, decoded):
                images[i] = img
        out = []
        for i, (img, plan) in enumerate(zip(images, crops.tolist())):
            img = img if img is not None else payloads[i].to(self.device, non_blocking=True)
            top, left, height, width, flip = plan
            if height < 0:
                img = F.center_crop(F.resize(img, [self.resize], antialias=True), [self.size, self.size])
            else:
                img = F.resized_crop(img, top, left, height, width, [self.size, self.size], antialias=True)
                img = img.flip(-1) if flip else img
            out.append(img)
        return torch.stack(out)
