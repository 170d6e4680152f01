"""Exact resume: a run stopped mid-epoch and resumed equals an uninterrupted run, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import QUIET, TINY_MODEL, make_image_folder

from vitpss.checkpoint import atomic_save, read_jsonl
from vitpss.cli import main

# Every source of randomness is on: augmentation, random patch sampler, drop path, Mixup/CutMix, EMA.
RECIPE = ["--epochs", "3", "--batch-size", "4", "--sampler", "random", "--drop-path", "0.1", "--mixup", "0.8",
          "--cutmix", "1.0", "--ema-decay", "0.9", "--hflip", "0.5", "--seed", "3", *TINY_MODEL, *QUIET]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = str(make_image_folder(root / "data", per_class=8))
    whole, part = root / "whole", root / "part"
    assert main(["train", "--data", data, "--output", str(whole), *RECIPE]) == 0
    assert main(["train", "--data", data, "--output", str(part), "--max-steps", "6", *RECIPE]) == 0
    stopped = torch.load(part / "checkpoint.pt", weights_only=True)
    with open(part / "train_log.jsonl", "a") as f:  # a step logged after the checkpoint, then a crash
        f.write(json.dumps({"step": 6, "loss": -1.0}) + "\n")
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    return whole, part, stopped


def test_stop_checkpoint_is_mid_epoch(runs):
    _, _, stopped = runs
    assert stopped["step"] == 6 and stopped["steps_per_epoch"] == 4


def test_resumed_run_logs_the_same_losses_and_rates_once_per_step(runs):
    whole, part, _ = runs
    a, b = read_jsonl(whole / "train_log.jsonl"), read_jsonl(part / "train_log.jsonl")
    assert [r["step"] for r in b] == list(range(12))
    assert [(r["loss"], r["keep_rate"], r["lr"]) for r in a] == [(r["loss"], r["keep_rate"], r["lr"]) for r in b]
    assert [v["acc1"] for v in read_jsonl(whole / "val_log.jsonl")] == [v["acc1"] for v in read_jsonl(part / "val_log.jsonl")]


def test_resumed_run_ends_with_bitwise_equal_weights_and_state(runs):
    whole, part, _ = runs
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()))
    assert a["rng"][0]["generator"].equal(b["rng"][0]["generator"])


def test_resumed_run_adds_its_wall_and_cpu_time_to_the_checkpoints(tmp_path):
    data = str(make_image_folder(tmp_path / "data", per_class=4))
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--output", str(run), "--max-steps", "2", *RECIPE]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["run_state"]["wall_time_s"] > 0 and ckpt["run_state"]["cpu_time_s"] > 0
    # a long first part: a resume that restarted its clocks would end far below these
    ckpt["run_state"].update(wall_time_s=1000.0, cpu_time_s=900.0)
    atomic_save(ckpt, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 1000 < summary["wall_time_s"] < 1100 and 900 < summary["cpu_time_s"] < 1000


def test_resume_refuses_to_change_the_recipe(runs, capsys):
    _, part, _ = runs
    assert main(["train", "--resume", str(part), "--lr", "0.5"]) == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err
