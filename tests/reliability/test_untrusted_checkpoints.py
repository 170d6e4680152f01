"""No code execution from files: a checkpoint whose unpickling would run a command is refused.

The files below are real ``torch.save`` archives (intact checksums) whose pickle calls
``os.system``/``builtins.exec`` when loaded the unsafe way. Every command that reads a checkpoint
must refuse them with one line and exit 2, and the command must never have run.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from vitpss.checkpoint import CHECKPOINT_FORMAT
from vitpss.cli import main

TINY = ["--data", "synthetic", "--synthetic-size", "16", "--in-chans", "1", "--img-size", "16", "--patch-size", "4",
        "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "8", "--epochs", "1",
        "--workers", "0", "--threads", "1", "--quiet"]


class RunsCommand:
    """Unpickling this object runs ``function(argument)``."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def shell(marker):
    return RunsCommand(os.system, f"touch {marker}")


def python(marker):
    return RunsCommand(exec, f"open({str(marker)!r}, 'w').close()")


def hostile_checkpoint(path, payload, *, legacy: bool = False) -> None:
    """A training-checkpoint-shaped file with ``payload`` hidden among its plain values."""
    obj = {"format": CHECKPOINT_FORMAT, "step": 1, "model": {"w": torch.zeros(2)}, "config": {"epochs": payload}}
    if legacy:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, path)


def plain_pickle(path, payload) -> None:
    path.write_bytes(pickle.dumps({"model": payload}))


COMMANDS = {
    "eval": lambda f, out: ["eval", "--checkpoint", str(f)],
    "train --resume FILE": lambda f, out: ["train", "--resume", str(f)],
    "train --resume DIR": lambda f, out: ["train", "--resume", str(f.parent)],
    "train --pretrained": lambda f, out: ["train", "--pretrained", str(f), "--output", str(out), *TINY],
    "sweep": lambda f, out: ["sweep", "--checkpoint", str(f), "--output", str(out)],
}
FILES = {
    "torch.save zip, os.system": lambda p, m: hostile_checkpoint(p, shell(m)),
    "torch.save zip, exec": lambda p, m: hostile_checkpoint(p, python(m)),
    "legacy torch.save, os.system": lambda p, m: hostile_checkpoint(p, shell(m), legacy=True),
    "plain pickle, os.system": lambda p, m: plain_pickle(p, shell(m)),
}


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, command, kind, capsys):
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    FILES[kind](run_dir / "checkpoint.pt", marker)
    assert main(COMMANDS[command](run_dir / "checkpoint.pt", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "checkpoint.pt" in err
    assert not marker.exists(), "loading the checkpoint ran its command"


def test_the_refusal_says_why_and_names_the_offending_object(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    hostile_checkpoint(tmp_path / "checkpoint.pt", shell(marker))
    assert main(["train", "--pretrained", str(tmp_path / "checkpoint.pt"), "--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "system" in err and "run code" in err
    assert main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_a_plain_state_dict_with_numpy_and_argparse_extras_still_loads_as_pretrained(tmp_path):
    """Data-only extras that other projects save (NumPy RNG state, argparse options) are not code."""
    import argparse

    import numpy as np

    from vitpss.weights import read_checkpoint

    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "rng": np.random.get_state(),
                "epoch": np.int64(3)}, tmp_path / "foreign.pt")
    loaded = read_checkpoint(tmp_path / "foreign.pt")
    assert torch.equal(loaded["model"]["w"], torch.ones(2)) and loaded["args"].lr == 0.1
