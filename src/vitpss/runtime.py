"""Process set-up shared by the jobs: device, data-parallel group, AMP, seeding, threads, compile, run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import random_seed
from torch import nn

from .checkpoint import RUN_FILES, clear_run_files
from .config import TrainConfig
from .errors import UsageError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = CUDA (this process's local rank) when available, else CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


@dataclasses.dataclass
class Dist:
    """This process's place in a data-parallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group from the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = resolve_device(device_name)
        if device.type == "cuda" and device.index is not None:
            # --device cuda:N: make N the current device, so CUDA events, streams and queries that
            # take no device (step timing, the prefetcher's side stream) use it rather than cuda:0
            torch.cuda.set_device(device)
        return Dist(), device
    if device_name.startswith("cuda:"):  # every rank would use that one GPU
        raise UsageError(f"--device {device_name} under torchrun (WORLD_SIZE={world}) would put every process on "
                         f"one device: use --device cuda (each process takes the GPU of its LOCAL_RANK)")
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


#: CUDA compute capability from which ``--amp auto`` picks bf16 (native bf16 tensor cores: A100, RTX 30xx on).
BF16_CAPABILITY = (8, 0)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``--amp auto`` made concrete for ``device``: bf16 on CUDA from compute capability 8.0, else fp16; off on CPU.

    Runs save the resolved value, so resuming on other hardware cannot switch the precision.
    """
    if amp != "auto":
        return amp
    if device.type != "cuda":
        return "off"
    # Compute capability 8.0 (Ampere) has bf16 tensor cores; torch.cuda.is_bf16_supported() also
    # counts the emulated bf16 of older GPUs (V100, T4), and asks the current device, not the run's.
    return "bf16" if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY else "fp16"


def amp_settings(amp: str, device: torch.device) -> tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """Autocast dtype and (fp16 only) a GradScaler for ``--amp`` (``auto``: see :func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)
    if amp == "off":
        return None, None
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs CUDA: use --amp bf16 on CPU")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (what timm's and nanoGPT's training scripts set); no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


#: Most graphs ``--compile`` allows (one per distinct keep rate); beyond, torch's recompile limit applies.
MAX_COMPILED_RATES = 32


def compile_for_schedule(net: nn.Module, schedule, *, warn: bool = True, backend: str = "inductor") -> nn.Module:
    """``torch.compile(net, dynamic=False)``: one static graph per distinct keep rate of ``schedule``.

    Dynamo specialises on the keep rate, so each distinct rate compiles once and later steps at it
    reuse its graph (``dynamic=False`` skips a symbolic trace that dynamo would throw away). The
    recompile limit is raised to the number of rates, up to MAX_COMPILED_RATES; more rates (e.g.
    ``--quantum 0``: every new rate is a new token count) print a warning: past torch's limit the
    remaining rates run uncompiled.
    """
    rates = len(np.unique(schedule.rates()))
    limit = torch._dynamo.config.recompile_limit
    if rates <= MAX_COMPILED_RATES:
        torch._dynamo.config.recompile_limit = max(limit, rates)
    elif warn:
        print(f"vitpss: warning: --compile compiles one graph per keep rate and this schedule has {rates} "
              f"distinct rates (--quantum {schedule.quantum:g}); after {limit} graphs the other rates run "
              f"uncompiled. Use --quantum 0.2 (5 rates) with --compile", file=sys.stderr)
    return torch.compile(net, dynamic=False, backend=backend)


def _holds_run(directory: Path) -> bool:
    return any((directory / name).exists() for name in RUN_FILES)


def prepare_output(cfg: TrainConfig, d: Dist, resuming: bool) -> Path:
    """The run directory: checked on every rank (refuse to mix runs), then created by rank 0."""
    out = cfg.output
    if out is None:
        stamp = [datetime.now().strftime("runs/train-%Y%m%d-%H%M%S")]
        if d.world_size > 1:
            dist.broadcast_object_list(stamp, src=0)
        out = stamp[0]
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {path} is a file: give a directory")
    if not resuming and path.is_dir() and _holds_run(path) and not cfg.overwrite:
        raise UsageError(f"--output {path} holds another run: choose another --output, continue it with "
                         f"--resume {path}, or replace it with --overwrite")
    if d.world_size > 1:
        dist.barrier()
    if d.main:
        path.mkdir(parents=True, exist_ok=True)
        if not resuming and cfg.overwrite:
            clear_run_files(path)
    return path


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy takes seeds below 2**32)."""
    random_seed(seed % 2**32)



@contextlib.contextmanager
def num_threads(threads: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (None: leave torch's choice), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
