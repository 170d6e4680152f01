"""Shared pieces of the reliability suite: a tiny deterministic run, subprocess launchers, comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitpss.checkpoint import read_jsonl
from vitpss.cli import main

HERE = Path(__file__).parent
#: 64 synthetic 16 px images, batch 16: 4 steps per epoch, 12 steps, a checkpoint after every step.
#: Random sampler, drop path, Mixup and EMA make every step depend on the restored RNG states.
STEPS_PER_EPOCH, EPOCHS = 4, 3
TINY_RUN = ["--data", "synthetic", "--synthetic-size", "64", "--in-chans", "1", "--img-size", "16",
            "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "16",
            "--epochs", str(EPOCHS), "--save-every-steps", "1", "--sampler", "random", "--drop-path", "0.1",
            "--mixup", "0.8", "--ema-decay", "0.9", "--workers", "0", "--threads", "1", "--quiet", "--seed", "3"]
#: The same data and model pre-trained by SimMIM (masks drawn from the run's generator, drop path on).
TINY_PRETRAIN = [*TINY_RUN[:TINY_RUN.index("--sampler")], "--drop-path", "0.1", "--workers", "0", "--threads", "1",
                 "--quiet", "--seed", "3", "--mask-ratio", "0.5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_vitpss(args: list[str], fault: str | None = None, run_dir: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``vitpss ARGS`` in a fresh process, optionally through the fault harness (``fault`` = PHASE:T)."""
    if fault is None:
        command = [sys.executable, "-m", "vitpss", *args]
    else:
        command = [sys.executable, str(HERE / "faulty_vitpss.py"), fault, str(run_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def train_state(run_dir: Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint that resume must restore (weights, EMA, optimizer), flattened."""
    ckpt = torch.load(run_dir / name, weights_only=True)
    tensors = {f"model.{k}": v for k, v in ckpt["model"].items()}
    tensors.update({f"ema.{k}": v for k, v in (ckpt["ema"] or {}).items()})
    for index, state in ckpt["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    tensors["step"] = torch.tensor(ckpt["step"])
    return tensors


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ bitwise: {different[:5]}"


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "train_log.jsonl")]


def val_accuracies(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["epoch"], r["acc1"]) for r in read_jsonl(run_dir / "val_log.jsonl")]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The tiny run trained once without interruption (in this process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--output", str(out), *TINY_RUN]) == 0
    return out


@pytest.fixture(scope="session")
def pretrain_reference(tmp_path_factory) -> Path:
    """The tiny pre-training run done once without interruption (in this process)."""
    out = tmp_path_factory.mktemp("pretrain-reference") / "run"
    assert main(["pretrain", "--output", str(out), *TINY_PRETRAIN]) == 0
    return out
