"""A new user's first run: `vitpss train --data DIR` picks a model for the data and says which."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_image_folder

from vitpss.cli import main
from vitpss.config import DEFAULT_MODEL, TrainConfig
from vitpss.models import auto_patch_size, model_report, resolve_auto_model, resolve_model_config


@pytest.fixture(scope="module")
def colour64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("d") / "data", per_class=8, size=64, modes=("RGB",))


@pytest.mark.parametrize("side, patch", [(64, 8), (32, 4), (224, 28), (96, 12), (24, 3)])
def test_auto_patch_size_gives_about_64_tokens(side, patch):
    assert auto_patch_size(side) == patch


def test_auto_model_is_a_small_vit_sized_for_the_images(colour64):
    cfg = resolve_auto_model(TrainConfig(data=str(colour64)))
    assert (cfg.model, cfg.img_size, cfg.in_chans, cfg.patch_size) == ("vit_tiny_patch16_224", 64, 3, 8)
    assert (cfg.embed_dim, cfg.depth) == (192, 6)


def test_auto_model_keeps_what_the_user_gave(colour64):
    cfg = resolve_auto_model(TrainConfig(data=str(colour64), img_size=32, depth=2))
    assert (cfg.img_size, cfg.patch_size, cfg.depth) == (32, 4, 2)


@pytest.mark.parametrize("data", ["mnist5k", "synthetic"])
def test_auto_model_on_the_built_in_data_is_the_default_model(data):
    assert resolve_auto_model(TrainConfig(data=data)).model == DEFAULT_MODEL


def test_a_model_for_other_images_is_said_once_with_how_they_are_adapted(colour64):
    lines = model_report(resolve_model_config(TrainConfig(data=str(colour64), model=DEFAULT_MODEL)))
    assert len(lines) == 2
    assert lines[1].endswith("are 64 px with 3 channels; vitpss_tiny_mnist takes 28 px with 1: they are resized "
                             "to 28 px and converted to greyscale")
    assert len(model_report(resolve_model_config(TrainConfig(data=str(colour64))))) == 1


def test_every_run_starts_with_its_model_line_and_logs_plain_progress(colour64, tmp_path, capsys):
    argv = ["train", "--data", str(colour64), "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--threads", "1", "--log-every", "1", "--output", str(tmp_path / "r")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == ("model vit_tiny_patch16_224: 64 px, 3 channels, patch 8, 64 patch "
                                            "tokens, width 192, depth 6")
    # stderr is no terminal here: plain lines, no progress bar
    assert "epoch 1/1  step 1/4  loss" in captured.err and "epoch 1/1  step 4/4" in captured.err
    assert "%|" not in captured.err and "\r" not in captured.err


def test_plan_counts_steps_per_epoch_from_the_data(colour64, capsys):
    assert main(["plan", "--data", str(colour64), "--batch-size", "4", "--no-measure", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["schedule"]["steps_per_epoch"] == 4 and plan["steps_per_epoch_counted"]
    assert plan["model"] == "vit_tiny_patch16_224"
