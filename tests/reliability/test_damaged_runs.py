"""Damaged checkpoints and a NaN loss: named clearly, never silently used, and the run still ends exact."""

from __future__ import annotations

import shutil
import zipfile

import pytest
import torch
from reliability_helpers import TINY_RUN, assert_bitwise_equal, step_losses, train_state

from vitpss.checkpoint import read_jsonl
from vitpss.cli import main

STOP_AT = 9  # mid-epoch 3: checkpoint.pt at step 9, best.pt at an earlier epoch end


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The tiny run stopped at step 9, as if interrupted (checkpoint.pt and an older best.pt)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["train", "--output", str(out), *TINY_RUN, "--max-steps", str(STOP_AT)]) == 0
    return out


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    return shutil.copytree(stopped_run, tmp_path / "run")


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_one_bit(path):
    """Flip one bit in the middle of the largest tensor's bytes: torch.load alone would not notice."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_and_extra = int.from_bytes(data[record.header_offset + 26:record.header_offset + 28], "little") + \
        int.from_bytes(data[record.header_offset + 28:record.header_offset + 30], "little")
    data[record.header_offset + 30 + name_and_extra + record.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def empty(path):
    path.write_bytes(b"")


DAMAGE = [truncate, flip_one_bit, empty]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_resume_names_a_damaged_checkpoint_and_falls_back_to_the_newest_valid_one(run_copy, damage, capsys,
                                                                                   reference_run):
    best_step = torch.load(run_copy / "best.pt", weights_only=True)["step"]
    damage(run_copy / "checkpoint.pt")
    assert main(["train", "--resume", str(run_copy)]) == 0
    out, err = capsys.readouterr()
    assert f"{run_copy / 'checkpoint.pt'} is damaged" in err
    assert f"resuming from {run_copy / 'best.pt'} (step {best_step})" in out
    assert_bitwise_equal(train_state(run_copy), train_state(reference_run))  # resume is still exact
    assert step_losses(run_copy) == step_losses(reference_run)


def test_resume_picks_the_newest_valid_checkpoint_and_says_which(run_copy, capsys):
    assert main(["train", "--resume", str(run_copy), "--max-steps", str(STOP_AT + 1)]) == 0
    assert f"resuming from {run_copy / 'checkpoint.pt'} (step {STOP_AT})" in capsys.readouterr().out


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_checkpoint_named_explicitly_is_refused_with_the_fallback(run_copy, damage, capsys):
    damage(run_copy / "checkpoint.pt")
    before = (run_copy / "train_log.jsonl").read_bytes()
    assert main(["train", "--resume", str(run_copy / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{run_copy / 'checkpoint.pt'} is damaged" in err and "fall back to best.pt" in err
    assert (run_copy / "train_log.jsonl").read_bytes() == before  # nothing touched


def test_a_run_whose_checkpoints_are_all_damaged_is_refused(run_copy, capsys):
    truncate(run_copy / "checkpoint.pt")
    flip_one_bit(run_copy / "best.pt")
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "no valid checkpoint to resume" in err and "checkpoint.pt is damaged" in err and "best.pt is damaged" in err


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_eval_of_a_damaged_checkpoint_names_it(run_copy, damage, capsys):
    damage(run_copy / "best.pt")
    assert main(["eval", "--checkpoint", str(run_copy / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run_copy / 'best.pt'} is damaged" in err


NAN_STEP = 6


@pytest.fixture
def nan_at_step(monkeypatch):
    """Make the model's training output NaN at global step NAN_STEP (counted from train_log.jsonl)."""
    state = {"run_dir": None}

    def hook(module, args, output):
        if module.training and hasattr(module, "blocks") and state["run_dir"] is not None:
            logged = (state["run_dir"] / "train_log.jsonl").read_bytes().count(b"\n")
            if logged == NAN_STEP:
                return output * float("nan")
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield state
    handle.remove()


def test_nan_loss_stops_with_the_step_and_exit_1_keeping_the_last_good_checkpoint(tmp_path, nan_at_step, capsys,
                                                                                 reference_run):
    out = tmp_path / "run"
    nan_at_step["run_dir"] = out
    assert main(["train", "--output", str(out), *TINY_RUN]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"loss is nan at step {NAN_STEP}" in err and str(out / "checkpoint.pt") in err
    assert not (out / "summary.json").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == NAN_STEP and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    nan_at_step["run_dir"] = None  # the fault is gone: the kept checkpoint resumes to the exact result
    assert main(["train", "--resume", str(out)]) == 0
    assert_bitwise_equal(train_state(out), train_state(reference_run))


class SimulatedCrash(BaseException):
    """Raised from inside the run: it unwinds like a kill (nothing catches it), in this process."""


def test_a_crash_between_the_max_steps_checkpoint_and_the_epoch_evaluation_loses_no_evaluation(tmp_path,
                                                                                              reference_run):
    out = tmp_path / "run"

    def crash_in_evaluation(module, args, output):
        if not module.training and hasattr(module, "blocks"):
            raise SimulatedCrash

    handle = torch.nn.modules.module.register_module_forward_hook(crash_in_evaluation)
    try:
        with pytest.raises(SimulatedCrash):  # --max-steps at the end of epoch 1, crash in its evaluation
            main(["train", "--output", str(out), *TINY_RUN, "--max-steps", "4"])
    finally:
        handle.remove()
    assert main(["train", "--resume", str(out)]) == 0
    assert [r["epoch"] for r in read_jsonl(out / "val_log.jsonl")] == [1, 2, 3]
    assert_bitwise_equal(train_state(out, "best.pt"), train_state(reference_run, "best.pt"))
