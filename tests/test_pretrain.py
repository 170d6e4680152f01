"""``vitpss pretrain`` end to end on tiny synthetic data, then its checkpoint feeding a fine-tune model."""

from __future__ import annotations

import json

import pytest
import torch

from vitpss import cli
from vitpss.config import TrainConfig, validate
from vitpss.commands.pretrain import pretrain
from vitpss.config import MaskConfig
from vitpss.models import model_from_pretrain_checkpoint
from vitpss.weights import load_pretrained

TINY = dict(model="vitpss_tiny_beit_mnist", data="synthetic", synthetic_size=48, img_size=28, in_chans=1,
            embed_dim=32, depth=2, num_heads=2, batch_size=16, epochs=2, warmup_epochs=0.0, quiet=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    cfg = validate(TrainConfig(**TINY, output=str(out), schedule="none", global_pool=""))
    pretrain(cfg, MaskConfig(mask_ratio=0.5))
    return out


def test_pretrain_writes_the_run_directory(run_dir):
    for name in ("config.yaml", "train_log.jsonl", "val_log.jsonl", "checkpoint.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    steps = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(6))  # 48 images / 16 per step x 2 epochs
    assert all(r["loss"] > 0 and r["keep_rate"] == 1.0 for r in steps)
    epochs = [json.loads(line) for line in (run_dir / "val_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mask_ratio"] == 0.5 and summary["mask_patch_size"] == 7
    assert "mask_patch_size: 7" in (run_dir / "config.yaml").read_text()


def test_pretrain_checkpoint_has_simmim_layout_and_loads_only_with_weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    keys = set(ckpt["model"])
    assert "mask_token" in keys and "decoder.0.weight" in keys
    assert "encoder.blocks.0.attn.relative_position_bias_table" in keys
    model, cfg, mask = model_from_pretrain_checkpoint(run_dir)
    assert cfg.global_pool == "" and mask["mask_ratio"] == 0.5
    assert torch.equal(model.mask_token, ckpt["model"]["mask_token"])


def test_pretrained_encoder_loads_into_the_fine_tuning_model(run_dir):
    from vitpss.models import build_model

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    cfg = validate(TrainConfig(**{**TINY, "num_classes": 10}))
    model = build_model(cfg)
    report = load_pretrained(model, run_dir)
    assert torch.equal(model.blocks[1].attn.qkv.weight, ckpt["model"]["encoder.blocks.1.attn.qkv.weight"])
    assert report.new == ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
    assert "mask_token" in report.ignored


def test_plot_reconstructions_writes_a_figure(run_dir, tmp_path):
    out = tmp_path / "recon.png"
    assert cli.main(["plot", "reconstructions", str(run_dir), "--output", str(out), "--images", "3"]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("flags,message", [
    (["--mask-ratio", "1.5"], "--mask-ratio=1.5 is out of range"),
    (["--mask-patch-size", "6"], "mask_patch_size=6 must be a multiple of the patch size"),
    (["--resume", "x"], "no checkpoint at x"),
])
def test_bad_pretrain_settings_are_one_line_errors(flags, message, tmp_path, capsys):
    args = ["pretrain", "--data", "synthetic", "--synthetic-size", "16", "--img-size", "28", "--in-chans", "1",
            "--model", "vitpss_tiny_beit_mnist", "--output", str(tmp_path / "run"), *flags]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_train_fine_tunes_from_the_pretrain_run_with_layer_decay(run_dir, tmp_path, capsys):
    from vitpss.trainer import train

    cfg = validate(TrainConfig(**{**TINY, "epochs": 1}, output=str(tmp_path / "ft"), pretrained=str(run_dir),
                               layer_decay=0.7, schedule="fixed", low=0.6))
    summary = train(cfg)
    out = capsys.readouterr().out
    assert f"pretrained weights from {run_dir}: loaded" in out and "new: fc_norm.weight" in out
    assert summary["epochs"] == 1 and (tmp_path / "ft" / "checkpoint.pt").is_file()
    steps = [json.loads(line) for line in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["keep_rate"] == 0.6 for r in steps)


def test_layer_decay_scales_the_stem_lowest_and_the_head_not_at_all():
    from timm.optim import create_optimizer_v2

    from vitpss.models import build_model

    model = build_model(validate(TrainConfig(**TINY)))
    groups = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5).param_groups
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.5 ** 3)  # depth 2: 4 layer ids
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.5 ** 2)
    assert scale["blocks.1.attn.qkv.weight"] == pytest.approx(0.5)
    assert scale["head.weight"] == scale["fc_norm.weight"] == 1.0


def test_pretrained_weights_of_another_model_are_a_one_line_error(run_dir, tmp_path, capsys):
    args = ["train", "--model", "vitpss_tiny_mnist", "--data", "synthetic", "--synthetic-size", "16",
            "--pretrained", str(run_dir), "--output", str(tmp_path / "run"), "--epochs", "1", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "pretrained weights do not fit VisionTransformer" in err and "missing from the file" in err
    assert len(err.splitlines()) == 1


def test_pretrain_stopped_mid_epoch_resumes_with_the_same_losses_and_weights(run_dir, tmp_path):
    part = tmp_path / "part"
    args = ["pretrain", "--model", "vitpss_tiny_beit_mnist", "--data", "synthetic", "--synthetic-size", "48",
            "--img-size", "28", "--in-chans", "1", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
            "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "0", "--quiet", "--mask-ratio", "0.5",
            "--output", str(part)]
    assert cli.main([*args, "--max-steps", "4"]) == 0
    assert torch.load(part / "checkpoint.pt", weights_only=True)["step"] == 4  # mid-epoch 2
    assert cli.main(["pretrain", "--resume", str(part), "--quiet"]) == 0
    losses = [[(r["step"], r["loss"]) for r in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())]
              for d in (run_dir, part)]
    assert losses[0] == losses[1]
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (run_dir, part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_resume_refuses_new_mask_settings(run_dir, capsys):
    assert cli.main(["pretrain", "--resume", str(run_dir), "--mask-ratio", "0.3"]) == 2
    assert "--mask-ratio and --mask-patch-size cannot change when resuming" in capsys.readouterr().err
