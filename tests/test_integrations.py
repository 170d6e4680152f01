"""Keep-rate schedules in Lightning and the Hugging Face Trainer; optional extras stay optional."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import vitpss
from vitpss.integrations import DeferredSchedule
from vitpss.patching import patch_samplers

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def test_importing_vitpss_imports_no_optional_framework():
    code = ("import sys, vitpss, vitpss.integrations; "
            "print(sorted(m for m in ('transformers', 'open_clip', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module, blocked, extra", [
    ("vitpss.integrations.lightning", ["lightning", "pytorch_lightning"], "lightning"),
    ("vitpss.integrations.transformers", ["transformers"], "hf"),
])
def test_a_missing_extra_gives_a_one_line_message_naming_it(monkeypatch, module, blocked, extra):
    for name in [m for m in sys.modules if m.split(".")[0] in blocked] + blocked:
        monkeypatch.setitem(sys.modules, name, None)  # what `import name` sees when it is not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as error:
        importlib.import_module(module)
    assert f"pip install 'vitpss[{extra}]'" in str(error.value) and "\n" not in str(error.value)


def test_deferred_schedule_checks_its_parameters_at_once_and_sizes_itself_later():
    with pytest.raises(ValueError, match="low"):
        DeferredSchedule("cyclic", low=0.0)
    schedule = DeferredSchedule("cyclic", low=0.2)
    schedule.resolve(total_steps=10, steps_per_epoch=4)
    assert (schedule.schedule.epochs, schedule.schedule.steps_per_epoch) == (3, 4)
    assert schedule(0) == pytest.approx(0.2) and schedule(2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="total_steps="):
        DeferredSchedule("linear").resolve(float("inf"), None)


def test_deferred_schedule_is_sized_on_the_exact_steps_of_a_run_that_stops_inside_an_epoch():
    linear = DeferredSchedule("linear", low=0.2, high=1.0, quantum=0)
    linear.resolve(total_steps=1000, steps_per_epoch=300)  # Trainer(max_steps=1000), 300 steps an epoch
    rates = linear.schedule.rates()
    assert linear.schedule.total_steps == len(rates) == 1000
    assert rates[0] == pytest.approx(0.2) and rates[-1] == pytest.approx(1.0)  # ends at high, not at 0.8

    cooled = DeferredSchedule("linear", low=0.2, high=0.8, quantum=0, cooldown_epochs=1)
    cooled.resolve(total_steps=1000, steps_per_epoch=300)
    rates = cooled.schedule.rates()
    assert (rates[700:] == 1.0).all() and rates[699] == pytest.approx(0.8)  # a cooldown of one epoch: 300 steps
    assert cooled.schedule.sampled_steps == 700


# --- Lightning ---------------------------------------------------------------------------------

def _lightning_module(L):
    class TinyClassifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = vitpss.attach(timm.create_model("vit_tiny_patch16_224", **TINY))
            self.seen = []  # (global step, keep rate the model trains at)

        def training_step(self, batch, batch_idx):
            self.seen.append((self.trainer.global_step, patch_samplers(self)[0].train_keep_rate))
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return TinyClassifier()


def _fit(L, module, callback, epochs, ckpt_path=None, max_steps=-1):
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 5, (16,)))
    trainer = L.Trainer(max_epochs=epochs, max_steps=max_steps, accumulate_grad_batches=2, callbacks=[callback],
                        logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(module, DataLoader(data, batch_size=2), ckpt_path=ckpt_path)
    return trainer


def test_lightning_callback_sets_the_rate_each_step_shared_by_accumulated_batches_and_logs_it():
    L = pytest.importorskip("lightning.pytorch")
    from vitpss.integrations.lightning import PatchSamplingSchedule

    callback, module = PatchSamplingSchedule("cyclic", low=0.2), _lightning_module(L)
    trainer = _fit(L, module, callback, epochs=2)
    schedule = callback.schedule.schedule
    assert (schedule.steps_per_epoch, schedule.total_steps) == (4, 8)  # 8 batches / 2 accumulated, 2 epochs
    assert [step for step, _ in module.seen] == [s for s in range(8) for _ in range(2)]
    assert all(rate == schedule(step) for step, rate in module.seen)
    assert len({rate for _, rate in module.seen}) > 1
    assert trainer.callback_metrics["keep_rate"] == pytest.approx(schedule(7))


def test_lightning_callback_sizes_a_max_steps_run_on_its_exact_steps():
    L = pytest.importorskip("lightning.pytorch")
    from vitpss.integrations.lightning import PatchSamplingSchedule

    callback, module = PatchSamplingSchedule("linear", low=0.2, quantum=0), _lightning_module(L)
    _fit(L, module, callback, epochs=-1, max_steps=6)  # 4 optimizer steps an epoch: stops inside epoch 2
    assert callback.schedule.schedule.total_steps == 6
    assert module.seen[-1] == (5, pytest.approx(1.0))  # the last step reaches high


def test_lightning_callback_state_survives_checkpoint_and_resume(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from vitpss.integrations.lightning import PatchSamplingSchedule

    first = PatchSamplingSchedule("linear", low=0.2, total_steps=6, steps_per_epoch=6)
    trainer = _fit(L, _lightning_module(L), first, epochs=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    resumed, module = PatchSamplingSchedule("linear", low=0.2), _lightning_module(L)  # would size 2 x 4 steps
    with pytest.warns(UserWarning, match="past its end"):  # the saved 6-step schedule, an 8-step run
        _fit(L, module, resumed, epochs=2, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.schedule.schedule == first.schedule.schedule
    assert [step for step, _ in module.seen][::2] == [4, 5, 6, 7]
    assert all(rate == first.schedule(step) for step, rate in module.seen)


# --- Hugging Face Trainer ----------------------------------------------------------------------

class RandomImages(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _hf_trainer(tmp_path, monkeypatch, callbacks):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    model = vitpss.attach(transformers.ViTForImageClassification(config))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2, logging_steps=1, save_strategy="no",
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=RandomImages(16), callbacks=callbacks)


def _fake_reporter():
    """A reporting integration (W&B, TensorBoard, ...) as the Trainer runs it: before the user's callbacks."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        def __init__(self):
            self.logged = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logged.append(dict(logs))

    return Reporter()


def test_hf_trainer_callback_sets_the_rate_each_step_and_logs_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from vitpss.integrations.transformers import PatchSamplingCallback

    callback = PatchSamplingCallback("cyclic", low=0.2)
    trainer = _hf_trainer(tmp_path, monkeypatch, [callback])
    model = trainer.model
    seen = []
    sampler = patch_samplers(model)[0]
    sampler.register_forward_pre_hook(lambda m, args: seen.append((trainer.state.global_step, m.train_keep_rate)))
    trainer.train()

    schedule = callback.schedule.schedule
    assert (schedule.steps_per_epoch, schedule.total_steps) == (4, 6)  # 8 batches / 2 accumulated; max_steps=6
    assert [step for step, _ in seen] == [s for s in range(6) for _ in range(2)]
    assert all(rate == schedule(step) for step, rate in seen) and len({r for _, r in seen}) > 1
    logged = [entry["keep_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [schedule(step) for step in range(6)]


def test_hf_reporting_integrations_see_keep_rate_once_the_callback_is_put_first(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from vitpss.integrations.transformers import PatchSamplingCallback, put_first

    reporter, callback = _fake_reporter(), PatchSamplingCallback("linear", low=0.2)
    trainer = _hf_trainer(tmp_path, monkeypatch, [reporter, callback])  # report_to's callbacks come first
    assert put_first(trainer, callback) is callback
    assert trainer.callback_handler.callbacks[0] is callback
    assert sum(c is callback for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert [entry["keep_rate"] for entry in reporter.logged] == [callback.schedule(step) for step in range(6)]


def test_hf_callback_warns_when_reporting_integrations_run_before_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from vitpss.integrations.transformers import PatchSamplingCallback

    reporter, callback = _fake_reporter(), PatchSamplingCallback("linear", low=0.2)
    trainer = _hf_trainer(tmp_path, monkeypatch, [reporter, callback])
    monkeypatch.setattr(trainer.args, "report_to", ["tensorboard"])  # what report_to resolves to
    with pytest.warns(UserWarning, match=r"after tensorboard recorded them: call .*put_first\(trainer, callback\)"):
        trainer.train()
    assert all("keep_rate" not in entry for entry in reporter.logged)  # the ordering put_first fixes


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_callbacks_find_the_samplers_once_per_fit_not_every_step(framework, tmp_path, monkeypatch):
    import vitpss.patching.core as core

    calls = []
    found = core.patch_samplers

    def counting(model):
        calls.append(type(model).__name__)
        return found(model)

    monkeypatch.setattr(core, "patch_samplers", counting)
    if framework == "lightning":
        L = pytest.importorskip("lightning.pytorch")
        import vitpss.integrations.lightning as integration

        monkeypatch.setattr(integration, "patch_samplers", counting)
        _fit(L, _lightning_module(L), integration.PatchSamplingSchedule("cyclic", low=0.2), epochs=2)
    else:
        pytest.importorskip("transformers")
        import vitpss.integrations.transformers as integration

        monkeypatch.setattr(integration, "patch_samplers", counting)
        _hf_trainer(tmp_path, monkeypatch, [integration.PatchSamplingCallback("cyclic", low=0.2)]).train()
    assert len(calls) == 1, calls


def test_docs_list_every_supported_family_by_its_registered_name():
    page = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    families = vitpss.supported_families()
    assert any("Hugging Face" in f for f in families) and any("open_clip" in f for f in families)
    assert [f for f in families if f not in page] == []
