"""The training step: no host synchronisation between log points, gradient accumulation, AMP resolution."""

from __future__ import annotations

import dataclasses
import json
import re
import traceback

import pytest
import torch

from vitpss.config import MaskConfig, TrainConfig, validate
from vitpss.tasks import SimMIMTask
from vitpss.trainer import Trainer, train

TINY = dict(data="synthetic", synthetic_size=160, in_chans=1, img_size=16, patch_size=4, embed_dim=32, depth=2,
            num_heads=2, batch_size=8, epochs=1, workers=0, threads=1, quiet=True, warmup_epochs=0.0)
#: Tensor methods that copy a value to the host (and so wait for the device).
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


@pytest.mark.parametrize("flags", [
    dict(sampler="gumbel-magnitude"),
    dict(sampler="random", mixup=0.8, ema_decay=0.9, clip_grad=1.0, drop_path=0.1, accum_steps=2),
    dict(pretrain=True, schedule="none", global_pool=""),  # SimMIM: masks drawn on the device
])
def test_no_host_sync_between_log_points(flags, tmp_path, monkeypatch):
    """Between two log points of an epoch, no step copies a tensor to the host."""
    seen: list[str] = []
    armed = [False]

    def counting(name):
        method = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            # The loader builds batches on the host (in worker processes outside tests): CPU tensors, not syncs.
            if armed[0] and not any("torch/utils/data/" in f.filename for f in traceback.extract_stack()):
                seen.append(f"Tensor.{name} at {traceback.format_stack(limit=2)[0].strip()}")
            return method(self, *args, **kwargs)
        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    log_points, write_log, train_epoch = [], Trainer.write_log, Trainer.train_epoch

    def logged(self):
        armed[0] = False
        try:
            write_log(self)
        finally:
            log_points.append(self.state.step)
            armed[0] = True  # from the first log point of the epoch on

    def epoch(self, index):
        try:
            return train_epoch(self, index)
        finally:
            armed[0] = False  # the last log point of the epoch is its end

    monkeypatch.setattr(Trainer, "write_log", logged)
    monkeypatch.setattr(Trainer, "train_epoch", epoch)
    flags = dict(flags)
    pretrain = flags.pop("pretrain", False)
    cfg = validate(TrainConfig(**{**TINY, **flags}, output=str(tmp_path / "run"), log_every=5))
    train(cfg, task=SimMIMTask(MaskConfig()) if pretrain else None)
    steps = 160 // 8 // cfg.accum_steps
    assert log_points[:steps // 5] == list(range(5, steps + 1, 5))
    assert seen == [], f"{len(seen)} host syncs between log points, first: {seen[0]}"


def test_train_log_keeps_one_record_per_step_with_cpu_time(tmp_path):
    cfg = validate(TrainConfig(**TINY, output=str(tmp_path / "run"), log_every=7))
    summary = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(20))
    assert set(records[0]) == {"step", "epoch", "keep_rate", "tokens", "loss", "lr", "step_time", "data_time",
                               "images", "cpu_time"}
    assert all(r["cpu_time"] > 0 and r["step_time"] > 0 for r in records)
    assert 0 < summary["train_cpu_time_s"] <= summary["cpu_time_s"]
    assert 0 <= summary["data_wait_share"] < 1


def _weights_after_one_epoch(tmp_path, name: str, **flags) -> dict[str, torch.Tensor]:
    cfg = validate(TrainConfig(**{**TINY, **flags}, output=str(tmp_path / name), schedule="none", seed=1))
    train(cfg)
    return torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]


def test_two_accumulated_batches_of_8_match_one_batch_of_16(tmp_path):
    accumulated = _weights_after_one_epoch(tmp_path, "accum", batch_size=8, accum_steps=2)
    whole = _weights_after_one_epoch(tmp_path, "whole", batch_size=16)
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-4, atol=1e-5, msg=key)
    records = [json.loads(line) for line in (tmp_path / "accum" / "train_log.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(r["images"] == 16 for r in records)


def test_accumulation_keeps_the_keep_rate_within_an_optimiser_step(tmp_path):
    cfg = validate(TrainConfig(**TINY, output=str(tmp_path / "run"), accum_steps=4, period_steps=3))
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5))  # 20 batches / 4 per optimiser step
    assert len({r["keep_rate"] for r in records}) > 1  # the schedule advances per optimiser step


def test_amp_auto_is_saved_resolved(tmp_path):
    cfg = validate(TrainConfig(**TINY, output=str(tmp_path / "run"), max_steps=2))
    assert cfg.amp == "auto"
    train(cfg)
    assert "amp: 'off'" in (tmp_path / "run" / "config.yaml").read_text()  # CPU: auto = off
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["amp"] == "off"


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from vitpss.engine import NonFiniteLossError
    from vitpss.tasks import ClassificationTask

    loss = ClassificationTask.loss

    def poisoned(self, net, x, y):
        value = loss(self, net, x, y)
        return value * float("nan") if self.steps_seen == 13 else value

    monkeypatch.setattr(ClassificationTask, "steps_seen", 0, raising=False)

    def counting(self, net, x, y):
        value = poisoned(self, net, x, y)
        self.steps_seen += 1
        return value

    monkeypatch.setattr(ClassificationTask, "loss", counting)
    out = tmp_path / "run"
    cfg = validate(TrainConfig(**TINY, output=str(out), log_every=50, save_every_steps=10))
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 13"):
        train(cfg)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 10
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(13))


def test_a_checkpoint_without_the_new_fields_still_resumes(tmp_path):
    """Checkpoints of earlier versions lack accum_steps, log_every and the CPU/data-wait counters."""
    from vitpss.checkpoint import atomic_save
    from vitpss.cli import main

    out = tmp_path / "run"
    train(validate(TrainConfig(**TINY, output=str(out), max_steps=3, amp="off")))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("accum_steps", "log_every"):
        del ckpt["config"][key]
    for key in ("train_cpu_time_s", "data_time_s"):
        del ckpt["run_state"][key]
    atomic_save(ckpt, out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 20


def test_data_wait_warning_fires_once_past_its_share_and_not_on_smoke_runs(tmp_path, monkeypatch, capsys):
    import vitpss.trainer as trainer_module

    train(validate(TrainConfig(**TINY, output=str(tmp_path / "smoke"))))
    assert "waited for data" not in capsys.readouterr().err  # a few seconds of training: no verdict
    monkeypatch.setattr(trainer_module, "DATA_WAIT_MIN_SECONDS", 0.0)
    monkeypatch.setattr(trainer_module, "DATA_WAIT_WARNING", 0.0)
    train(validate(TrainConfig(**{**TINY, "epochs": 2}, output=str(tmp_path / "run"))))
    err = capsys.readouterr().err
    assert err.count("waited for data") == 1 and "--workers" in err


class _MaskedL1(torch.nn.Module):
    """Stands in for SimMIM in validation_loss: ``(loss, prediction)`` of images and a mask."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def random_mask(self, batch, device, generator):
        return torch.rand(batch, 16, device=device, generator=generator) < 0.5

    def forward(self, x, mask):
        flat = x.flatten(1)
        return (self.proj(flat) - flat).abs()[mask].mean(), None


@pytest.mark.parametrize("task", ["classification", "simmim"])
def test_evaluation_copies_between_host_and_device_a_fixed_number_of_times_not_per_batch(task, monkeypatch):
    """Host/device copies (torch.tensor from host values, .item()/.tolist()...) do not grow with the batches."""
    from vitpss.engine import evaluate
    from vitpss.tasks import validation_loss

    calls: list[str] = []

    def counting(owner, name):
        function = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return wrapper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)) if task == "classification" \
        else _MaskedL1()
    batches = [(torch.randn(4, 1, 4, 4), torch.randint(0, 10, (4,))) for _ in range(6)]

    def copies(loader) -> int:
        calls.clear()
        with monkeypatch.context() as patch:
            patch.setattr(torch, "tensor", counting(torch, "tensor"))
            patch.setattr(torch, "as_tensor", counting(torch, "as_tensor"))
            for name in (*SYNCING, "new_tensor"):
                patch.setattr(torch.Tensor, name, counting(torch.Tensor, name))
            if task == "classification":
                result = evaluate(model, loader, torch.device("cpu"))
                assert result["images"] == 4 * len(loader)
            else:
                validation_loss(model, loader, torch.device("cpu"), seed=0)
        return len(calls)

    assert copies(batches[:2]) == copies(batches) <= 2


def _poison_losses(monkeypatch, bad) -> None:
    """The classification loss becomes NaN at the (0-based) training steps where ``bad(step)`` holds."""
    from vitpss.tasks import ClassificationTask

    loss = ClassificationTask.loss
    monkeypatch.setattr(ClassificationTask, "steps_seen", 0, raising=False)

    def poisoned(self, net, x, y):
        value = loss(self, net, x, y)
        self.steps_seen += 1
        return value * float("nan") if bad(self.steps_seen - 1) else value

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)


@pytest.fixture
def fp16_scaler(monkeypatch):
    """The --amp fp16 path on CPU: no autocast, but a real GradScaler that skips NaN/inf steps and halves its scale."""
    import vitpss.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "amp_settings", lambda amp, device: (None, torch.amp.GradScaler("cpu")))


@pytest.mark.parametrize("floor, expected", [
    (None, r"loss is nan at step 12 and at every step up to 17 under --amp fp16 \(the scaler skipped them"),
    (2.0 ** 13, r"loss is nan at step 15 and the --amp fp16 loss scale fell to 4\.1e\+03 \(below 8192\)"),
])
def test_fp16_stops_a_run_whose_steps_the_scaler_keeps_skipping_and_keeps_the_last_good_checkpoint(
        floor, expected, fp16_scaler, tmp_path, monkeypatch, capsys):
    import vitpss.trainer as trainer_module
    from vitpss.cli import main

    if floor is not None:  # the scale floor alone: 2**16 halved at steps 12-15 is 2**12 at the log point of step 16
        monkeypatch.setattr(trainer_module, "MIN_LOSS_SCALE", floor)
        monkeypatch.setattr(trainer_module, "NONFINITE_LOG_POINTS", 100)
    _poison_losses(monkeypatch, lambda step: step >= 12)
    out = tmp_path / "run"
    args = ["train", "--output", str(out), "--data", "synthetic", "--synthetic-size", "160", "--in-chans", "1",
            "--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--threads", "1", "--quiet",
            "--warmup-epochs", "0", "--log-every", "2", "--save-every-steps", "10"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(expected, err) and "\n" not in err, err
    assert f"training stopped, the last good checkpoint is {out / 'checkpoint.pt'}" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 10


def test_fp16_rides_out_a_short_run_of_skipped_steps(fp16_scaler, tmp_path, monkeypatch):
    _poison_losses(monkeypatch, lambda step: 12 <= step < 16)  # two NaN log points, then finite again
    cfg = validate(TrainConfig(**TINY, output=str(tmp_path / "run"), log_every=2))
    assert train(cfg) is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(records) == 20 and sum(r["loss"] != r["loss"] for r in records) == 4
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 20
