"""The data order (:class:`EpochSampler`) and the loader of one process (:func:`build_loader`)."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import TrainConfig
from ..errors import UsageError
from ..prefetch import DevicePrefetcher
from .gpu_decode import DeviceDecode
from .sources import data_kind

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


def default_workers(cfg: TrainConfig, world_size: int = 1) -> int:
    """DataLoader workers per process: 0 for in-memory data, else the CPUs per process minus one (max 8).

    Training on a CPU with at most 2 cores per process also gets 0: workers would take cores from
    the model's own compute (benchmarks/schedule_speed.py on 2 cores: 2 workers made the cyclic run
    15% slower than loading in the main process).
    """
    if cfg.workers is not None:
        return cfg.workers
    if data_kind(cfg.data) not in ("folder", "wds", "hf"):
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
    view, decode = _device_view(ds, cfg, device)
    loader = DataLoader(
        view if view is not None else ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
        drop_last=train and sampler.shard_size() >= batch_size, collate_fn=getattr(view, "collate", None),
        persistent_workers=workers > 0, pin_memory=device is not None and device.type == "cuda" and decode is None,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loader off the global RNG
    )
    if device is None:
        return loader
    if view is None:
        return DevicePrefetcher(loader, device)
    mean, std = view.normalization
    return DevicePrefetcher(loader, device, mean=mean, std=std, erase_probability=view.erase_probability,
                            decode=decode)


def _device_view(ds: Dataset, cfg: TrainConfig, device: torch.device | None) -> tuple[Dataset | None, DeviceDecode | None]:
    """The dataset view the loader serves for ``device`` (uint8 images, or undecoded JPEGs with
    ``--decode gpu``) and the device decoder of the latter; ``(None, None)``: ``ds`` itself."""
    if device is None:
        return None, None
    if cfg.decode == "gpu":
        encoded_view = getattr(ds, "encoded_view", None)
        view = encoded_view() if encoded_view is not None else None
        if view is None:
            raise UsageError(f"--decode gpu decodes image files read from disk, but --data {cfg.data} is held in "
                             f"memory or generated: pass --in-memory off (an ImageFolder), or drop --decode gpu")
        return view, DeviceDecode.for_transform(device, view.transform, view.source.in_chans)
    uint8_view = getattr(ds, "uint8_view", None)
    return (uint8_view() if uint8_view is not None else None), None
