"""Batches onto the device the way timm's ``PrefetchLoader`` does, with seeded random erasing.

Datasets that can (:meth:`vitpss.data.InMemoryDataset.uint8_view`,
:meth:`vitpss.data.TransformedDataset.uint8_view`) hand the loader uint8 images, a quarter of the
bytes of float32 through worker queues and pinned memory. :class:`DevicePrefetcher` copies each
batch without blocking (on CUDA, on a side stream, one batch ahead of the step), converts and
normalises it on the device, and applies random erasing there (timm's ``RandomErasing``, mode
``pixel``, one box), each box and its noise a pure function of the sample's seed, so that a resumed
run sees the same pixels.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .seeding import seeded_uniforms

__all__ = ["DevicePrefetcher", "erase_boxes", "random_erase_"]

ERASE_ATTEMPTS = 10  # timm's RandomErasing tries 10 boxes before giving up on an image


def erase_boxes(seeds: Sequence[int] | np.ndarray, height: int, width: int, probability: float, *,
                min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> np.ndarray:
    """``(len(seeds), 4)`` int rows ``(top, left, h, w)`` of one random-erasing box per image; ``h = 0``: none.

    timm's ``RandomErasing`` distribution (erase with ``probability``; area fraction uniform in
    ``[min_area, max_area]``, log-uniform aspect in ``[min_aspect, 1 / min_aspect]``, the first of
    10 attempts that fits), each row a pure function of its seed; a negative seed (unaugmented
    sample) gives no box.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    rows = np.arange(len(seeds))
    u = seeded_uniforms(np.where(seeds < 0, 0, seeds).astype(np.uint64), 1 + 4 * ERASE_ATTEMPTS)
    area = height * width * (min_area + (max_area - min_area) * u[:, 1::4])
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, 2::4])
    h = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = fits.argmax(1)
    erase = (u[:, 0] < probability) & fits[rows, first] & (seeds >= 0)
    h, w = h[rows, first] * erase, w[rows, first] * erase
    top = np.floor(u[:, 3::4][rows, first] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, 4::4][rows, first] * (width - w + 1)).astype(np.int64)
    return np.stack([top, left, h, w], axis=1)


def random_erase_(images: torch.Tensor, seeds: Sequence[int] | np.ndarray, probability: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Random erasing of normalised ``images`` in place, on their device: the boxes of
    :func:`erase_boxes`, each filled with N(0, 1) noise from ``generator`` reseeded with the image's
    seed (so an image's pixels do not depend on its batch). Returns ``images``."""
    seeds = np.asarray(seeds, dtype=np.int64)
    boxes = erase_boxes(seeds, images.shape[-2], images.shape[-1], probability)
    for i in np.flatnonzero(boxes[:, 2]):  # box sizes are host numbers: nothing waits for the device
        top, left, h, w = (int(v) for v in boxes[i])
        generator.manual_seed(int(seeds[i]) + 1)
        images[i, :, top:top + h, left:left + w].normal_(generator=generator)
    return images


class DevicePrefetcher:
    """Wraps a DataLoader: yields ``(images, labels)`` on ``device``, normalised floats.

    ``mean``/``std`` (in [0, 1] units) given: the loader yields ``(uint8 images, labels, seeds)``,
    converted and normalised here; ``erase_probability > 0``: random erasing of the normalised
    images (:func:`erase_boxes`). ``decode(payloads, crops)``: the loader yields ``(payloads, labels,
    seeds, crops)`` that ``decode`` turns into uint8 images on the device (``--decode gpu``,
    :class:`vitpss.data.gpu_decode.DeviceDecode`). Without ``mean``: the loader's batches are already normalised and
    are only moved. On CUDA the next batch is copied and prepared on a side stream while the
    current one is used. Everything else (``sampler``, ``dataset``, ``batch_size``) is the
    loader's.
    """

    def __init__(self, loader: DataLoader, device: torch.device, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, erase_probability: float = 0.0,
                 decode: Optional[Callable[[Any, torch.Tensor], torch.Tensor]] = None) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.mean = self.std = None
        if mean is not None and std is not None:
            self.mean = torch.tensor([255 * m for m in mean], device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor([255 * s for s in std], device=self.device).view(1, -1, 1, 1)
        self.erase_probability = erase_probability
        self.decode = decode
        self.erase_generator = torch.Generator(self.device) if erase_probability > 0 else None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        try:
            loader = self.__dict__["loader"]
        except KeyError:  # pickle and copy look up __setstate__ etc. before __dict__ is filled
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None
        return getattr(loader, name)

    def prepare(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch on the device: copied, converted to float, normalised, erased."""
        x = self.decode(batch[0], batch[3]) if self.decode else batch[0].to(self.device, non_blocking=True)
        y = batch[1].to(self.device, non_blocking=True)
        if self.mean is not None:
            x = x.float().sub_(self.mean).div_(self.std)
        if self.erase_generator is not None and len(batch) > 2:
            random_erase_(x, batch[2].numpy(), self.erase_probability, self.erase_generator)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        ready: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        for batch in self.loader:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                prepared = self.prepare(batch)
            if ready is not None:
                yield ready
            if stream is not None:  # the step that uses it waits for its copy, not the host
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                for tensor in prepared:
                    tensor.record_stream(current)
            ready = prepared
        if ready is not None:
            yield ready
