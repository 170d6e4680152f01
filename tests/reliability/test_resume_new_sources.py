"""Resume from WebDataset shards and Hugging Face datasets: SIGKILL mid-epoch and mid-checkpoint, resume, and
the finished run equals the uninterrupted one bit for bit (both sources are indexed: sample-exact resume)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from reliability_helpers import TINY_RUN, assert_bitwise_equal, run_vitpss, step_losses, train_state, val_accuracies

from vitpss.cli import main

sys.path.insert(0, str(Path(__file__).parent.parent))
from train_helpers import folder_to_hf, folder_to_shards, make_image_folder  # noqa: E402

pytest.importorskip("webdataset")
pytest.importorskip("datasets")

#: TINY_RUN on 32 images of 16 px: 4 steps of 8 per epoch, 2 epochs, one checkpoint per step.
FLAGS = [*TINY_RUN[TINY_RUN.index("--in-chans"):], "--batch-size", "8", "--epochs", "2"]
TOTAL = 8


@pytest.mark.slow
@pytest.mark.parametrize("convert", [folder_to_shards, folder_to_hf], ids=["wds", "hf"])
def test_run_killed_inside_a_step_and_a_save_resumes_bitwise_identically(tmp_path, convert):
    data = convert(make_image_folder(tmp_path / "imgs", per_class=16, val_per_class=4, size=16), tmp_path / "data")
    flags = ["--data", str(data), *FLAGS]
    reference = tmp_path / "reference"
    assert main(["train", "--output", str(reference), *flags]) == 0
    run_dir = tmp_path / "run"
    args = ["train", "--output", str(run_dir), *flags]
    for fault in ("save:3", "forward:6"):
        result = run_vitpss(args, fault=fault, run_dir=run_dir)
        assert result.returncode == -9, f"kill point {fault} was never reached:\n{result.stderr}"
        args = ["train", "--resume", str(run_dir)]
    result = run_vitpss(args)
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in step_losses(run_dir)] == list(range(TOTAL))
    assert step_losses(run_dir) == step_losses(reference)
    assert val_accuracies(run_dir) == val_accuracies(reference)
    assert_bitwise_equal(train_state(run_dir), train_state(reference))
