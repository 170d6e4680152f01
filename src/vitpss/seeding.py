"""Randomness that is a pure function of a sample's seed (augmentations, random erasing), so that a
resumed run, or another worker count, sees the same pixels."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["seeded_rng", "seeded_uniforms"]


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with Python's and torch's CPU RNG seeded by ``seed``; restore both afterwards."""
    py_state, torch_state = random.getstate(), torch.default_generator.get_state()
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.default_generator.set_state(torch_state)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 per input uint64 (vectorised, no generator state)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_uniforms(seeds: Sequence[int], count: int) -> np.ndarray:
    """``(len(seeds), count)`` floats in [0, 1), each row a pure function of its seed."""
    base = np.asarray(seeds, dtype=np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
    return (_splitmix64(base) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
