"""--tokens resize: a keep rate realised as a smaller image (vitpss.resolution) in training and sweeps."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, strategies as st
from train_helpers import tiny_run

from vitpss.checkpoint import read_jsonl
from vitpss.cli import main
from vitpss.config import TrainConfig
from vitpss.models import build_model
from vitpss.resolution import grid_at_rate, patches_at_rate, resize_to_rate, resized_inputs, size_at_rate


@given(grid=st.integers(1, 32), rate=st.floats(0.01, 1.0))
def test_resized_grid_keeps_about_rate_of_the_patches(grid, rate):
    rows, cols = grid_at_rate(rate, (grid, grid))
    assert 1 <= rows <= grid and rows == cols
    # each side is sqrt(rate) of the grid, rounded: within half a patch of the exact side
    assert abs(rows - grid * rate ** 0.5) <= 0.5 + 1e-9 or rows == 1


@given(grid=st.integers(2, 16), low=st.floats(0.05, 1.0), high=st.floats(0.05, 1.0))
def test_more_keep_rate_never_means_fewer_tokens(grid, low, high):
    low, high = sorted((low, high))
    assert patches_at_rate(low, (grid, grid)) <= patches_at_rate(high, (grid, grid))


def test_full_rate_keeps_the_image_and_lower_rates_use_patch_multiples():
    x = torch.randn(2, 3, 32, 32)
    assert resize_to_rate(x, 1.0, (4, 4)) is x
    assert size_at_rate(0.2, (32, 32), (4, 4)) == (16, 16)  # 8x8 patches -> 4x4: 16 of 64 tokens
    assert resize_to_rate(x, 0.5, (4, 4)).shape[-2:] == (24, 24)
    assert size_at_rate(0.5, (32, 48), (4, 4)) == (24, 32)  # each side on its own
    with pytest.raises(ValueError, match="out of range"):
        grid_at_rate(0.0, (8, 8))


def test_resize_model_is_the_sampling_model_at_full_size():
    cfg = TrainConfig(model="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    resizing = build_model(dataclasses.replace(cfg, tokens="resize")).eval()
    resizing.load_state_dict(plain.state_dict())  # same parameters: a checkpoint of one loads into the other
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(plain(x), resizing(x))
    with resized_inputs(resizing, 0.25):
        assert resizing(x).shape == (3, 10)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        with resized_inputs(plain, 0.25):
            pass


def test_training_with_resize_logs_the_smaller_token_counts(tmp_path):
    out = tmp_path / "run"
    assert main(tiny_run(out, "--tokens", "resize", "--schedule", "linear", "--low", "0.2")) == 0
    records = read_jsonl(out / "train_log.jsonl")
    # 16 px, patch 4: a 4x4 grid; rate 0.2 -> 2x2 = 4 patches + the class token
    assert {(r["keep_rate"], r["tokens"]) for r in records} >= {(0.2, 5), (1.0, 17)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute_fraction"] < 1


def test_resize_run_resumes_exactly(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    flags = ("--tokens", "resize", "--schedule", "cosine", "--seed", "1")
    assert main(tiny_run(whole, *flags)) == 0
    assert main(tiny_run(part, *flags, "--max-steps", "5")) == 0
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    a, b = read_jsonl(whole / "train_log.jsonl"), read_jsonl(part / "train_log.jsonl")
    assert [(r["loss"], r["tokens"]) for r in a] == [(r["loss"], r["tokens"]) for r in b]


def test_resize_is_refused_for_models_without_dynamic_size(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--output", str(out), "--data", "synthetic", "--model", "vitpss_tiny_beit_mnist",
                 "--tokens", "resize", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--tokens resize" in err and len(err.splitlines()) == 1


def test_sweep_at_lower_resolution_of_a_sampling_run(tmp_path):
    out = tmp_path / "run"
    assert main(tiny_run(out, epochs=1)) == 0
    assert main(["sweep", "--checkpoint", str(out), "--keep-rates", "1,0.25", "--tokens", "resize",
                 "--repeats", "1", "--warmup", "1", "--threads", "1"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["tokens"] for r in rows] == [17, 5]  # 4x4 patches, then 2x2 (+ class token)
