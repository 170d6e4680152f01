"""End-to-end `vitpss train` / `vitpss eval` on tiny synthetic runs: the run-directory contract."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from train_helpers import tiny_run

from vitpss.checkpoint import read_jsonl
from vitpss.cli import main
from vitpss.config import TrainConfig
from vitpss.schedules import build_schedule
from vitpss.models import model_from_checkpoint

STEP_FIELDS = {"step", "epoch", "keep_rate", "tokens", "loss", "lr", "step_time", "data_time"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(tiny_run(out, "--schedule", "cyclic", "--low", "0.25", "--quantum", "0.25")) == 0
    return out


def test_run_directory_holds_every_contract_file(run_dir):
    for name in ("config.yaml", "train_log.jsonl", "val_log.jsonl", "checkpoint.pt", "best.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_train_log_has_every_step_with_the_rate_the_schedule_gives(run_dir):
    records = read_jsonl(run_dir / "train_log.jsonl")
    schedule = build_schedule("cyclic", low=0.25, high=1.0, quantum=0.25, steps_per_epoch=4, epochs=2)
    assert [r["step"] for r in records] == list(range(8))
    assert all(STEP_FIELDS <= r.keys() for r in records)
    assert [r["keep_rate"] for r in records] == [schedule(t) for t in range(8)]
    assert [r["tokens"] for r in records] == [1 + round(schedule(t) * 16) for t in range(8)]
    assert [r["epoch"] for r in records] == [1] * 4 + [2] * 4  # epochs count from 1


def test_val_log_and_summary_report_accuracy_time_and_compute(run_dir):
    val = read_jsonl(run_dir / "val_log.jsonl")
    assert [v["epoch"] for v in val] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["acc1"] == val[-1]["acc1"] and summary["best_acc1"] == max(v["acc1"] for v in val)
    assert summary["schedule"] == "cyclic" and summary["sampler"] == "random" and summary["epochs"] == 2
    assert 0.3 < summary["compute_fraction"] < 1.0
    assert summary["train_time_s"] > 0 and summary["images_per_s"] > 0
    # the whole loop (evaluations, checkpoints) takes longer than its steps alone
    assert summary["wall_time_s"] > summary["train_time_s"] and summary["cpu_time_s"] > 0


def test_every_epoch_number_counts_from_1(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(tiny_run(out)) == 0
    console = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    val = read_jsonl(out / "val_log.jsonl")
    best = max(val, key=lambda v: v["acc1"])
    assert summary["best_epoch"] == best["epoch"] and f"(epoch {summary['best_epoch']})" in console
    assert [v["epoch"] for v in val] == [1, 2] and [v["step"] for v in val] == [4, 8]
    assert "epoch 1/2" in console and "epoch 2/2" in console and "epoch 0" not in console


def test_resume_turns_logs_counted_from_0_into_logs_counted_from_1(tmp_path):
    from vitpss.trainer import upgrade_epoch_numbers

    (tmp_path / "val_log.jsonl").write_text('{"epoch": 0, "acc1": 1.0}\n{"epoch": 1, "acc1": 2.0}\n')
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps({"step": t, "epoch": t // 4}) + "\n" for t in range(8)))
    upgrade_epoch_numbers(tmp_path, steps_per_epoch=4)
    assert read_jsonl(tmp_path / "val_log.jsonl") == [{"epoch": 1, "acc1": 1.0, "step": 4},
                                                      {"epoch": 2, "acc1": 2.0, "step": 8}]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [1] * 4 + [2] * 4
    upgrade_epoch_numbers(tmp_path, steps_per_epoch=4)  # logs that count from 1 stay as they are
    assert [r["epoch"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [1] * 4 + [2] * 4


def test_config_yaml_is_fully_resolved(run_dir):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["img_size"] == 16 and saved["patch_size"] == 4 and saved["in_chans"] == 1
    assert saved["num_classes"] == 10 and saved["global_pool"] == "avg"
    TrainConfig(**saved)


def test_checkpoint_loads_with_weights_only(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["config"]["epochs"] == 2


def test_eval_reproduces_the_logged_accuracy_without_model_flags(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    acc1 = float(capsys.readouterr().out.split()[1])
    assert acc1 == pytest.approx(read_jsonl(run_dir / "val_log.jsonl")[-1]["acc1"], abs=0.01)


def test_eval_at_a_keep_rate_uses_fewer_patches(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--keep-rate", "0.5"]) == 0
    assert "keep rate 0.5" in capsys.readouterr().out
    model, cfg = model_from_checkpoint(run_dir / "best.pt")
    assert cfg.depth == 2 and not model.training


def test_ema_and_mixup_run_reports_ema_accuracy(tmp_path):
    out = tmp_path / "ema"
    assert main(tiny_run(out, "--ema-decay", "0.9", "--mixup", "0.8", "--cutmix", "1.0", "--clip-grad", "1.0",
                         epochs=1)) == 0
    assert "ema_acc1" in read_jsonl(out / "val_log.jsonl")[0]
    assert "ema_acc1" in json.loads((out / "summary.json").read_text())


def test_bf16_amp_trains_on_cpu(tmp_path):
    out = tmp_path / "amp"
    assert main(tiny_run(out, "--amp", "bf16", "--sampler", "random", epochs=1)) == 0
    assert (out / "summary.json").is_file()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    args = tiny_run(out, "--lr", "1e30", "--warmup-epochs", "0", "--min-lr", "0", "--save-every-steps", "1", epochs=3)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitpss: error: loss is") and "\n" not in err
    step = int(err.split(" at step ")[1].split()[0])
    assert f"the last good checkpoint is {out / 'checkpoint.pt'}" in err
    assert not (out / "summary.json").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == step  # saved after the last finite step, never after the bad one
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == list(range(step))
