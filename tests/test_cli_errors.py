"""Bad input: one line on stderr naming the problem and the fix, exit status 2, nothing written."""

from __future__ import annotations

import shutil

import pytest
import torch
from train_helpers import make_image_folder, tiny_run

from vitpss.cli import main


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitpss: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)


def _drop_val_class(root):
    shutil.rmtree(root / "val" / "dog")


def _corrupt_image(root):
    (root / "train" / "cat" / "2.png").write_bytes(b"not a png")


@pytest.mark.parametrize("argv, expected", [
    (["--data", "/no/such/dir"], "no such directory"),
    (["--model", "deit_tiny_patch16_22"], "unknown model 'deit_tiny_patch16_22' (did you mean 'deit_tiny_patch16_224'?)"),
    (["--model", "resnet18"], "model resnet18 (ResNet) is not supported"),
    (["--schedule", "cyclical"], "unknown schedule 'cyclical' (did you mean 'cyclic'?): choose one of none, fixed"),
    (["--sampler", "rand"], "unknown sampler 'rand' (did you mean 'random'?)"),
    (["--low", "0"], "invalid schedule setting: low=0.0 is out of range"),
    (["--low", "0.8", "--high", "0.4"], "invalid schedule setting: high=0.4"),
    (["--img-size", "30"], "image size 30 is not divisible by patch size 7"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--batchsize", "4"], "unrecognized arguments: --batchsize"),
])
def test_bad_arguments_fail_before_writing_anything(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    assert expected in run_error(capsys, ["train", "--output", str(out), "--quiet", *argv])
    assert not out.exists()


@pytest.mark.parametrize("mutate, expected", [
    (lambda root: shutil.rmtree(root / "train"), "missing train/ subdirectory"),
    (_drop_val_class, "class 'dog' is in train/ but not in val/"),
])
def test_bad_image_folders_are_named(folder, tmp_path, capsys, mutate, expected):
    mutate(folder)
    assert expected in run_error(capsys, tiny_run(tmp_path / "out", data=str(folder)))
    assert not (tmp_path / "out").exists()


def test_empty_data_directory_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "missing train/" in run_error(capsys, tiny_run(tmp_path / "out", data=str(tmp_path / "empty")))


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_image_is_named_on_one_line(folder, tmp_path, capsys, workers):
    _corrupt_image(folder)
    err = run_error(capsys, [*tiny_run(tmp_path / "out", data=str(folder), epochs=1), "--workers", workers,
                             "--on-bad-image", "error"])
    assert f"cannot read image {folder / 'train' / 'cat' / '2.png'}" in err


def test_output_holding_another_run_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("another run\n")
    err = run_error(capsys, tiny_run(out))
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "config.yaml").read_text() == "another run\n"


def test_yaml_with_an_unknown_key_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    assert "unknown setting 'epoch' (did you mean 'epochs'?)" in run_error(capsys, ["train", "--config", str(path)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(tiny_run(out, epochs=1)) == 0
    return out / "checkpoint.pt"


def test_checkpoint_of_another_model_names_the_mismatching_keys(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["depth"] = 3
    torch.save(ckpt, tmp_path / "other.pt")
    err = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "other.pt")])
    assert "holds weights of another model (missing: blocks.2." in err


@pytest.mark.parametrize("argv, expected", [
    (["--keep-rate", "1.5"], "--keep-rate=1.5 is out of range"),
    (["--data", "/no/such/dir"], "no such directory"),
])
def test_bad_eval_arguments(checkpoint, capsys, argv, expected):
    assert expected in run_error(capsys, ["eval", "--checkpoint", str(checkpoint), *argv])


def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    assert "is not a vitpss training checkpoint" in run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "plain.pt")])
