"""Process set-up on hardware this machine does not have: CUDA queries and torchrun's environment are mocked."""

from __future__ import annotations

import pytest
import torch

from vitpss import runtime
from vitpss.errors import UsageError


@pytest.fixture
def gpus(monkeypatch):
    """Two fake GPUs: cuda:0 a V100 (7.0, emulated bf16 only), cuda:1 an A100 (8.0); current device 1."""
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation

    def get_device_capability(device=None):
        index = torch.device(device).index if device is not None else 1
        return capability[1 if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)


@pytest.mark.parametrize("device, expected", [("cuda:0", "fp16"), ("cuda:1", "bf16"), ("cpu", "off")])
def test_amp_auto_picks_bf16_from_the_run_devices_compute_capability(gpus, device, expected):
    assert runtime.resolve_amp("auto", torch.device(device)) == expected


def test_amp_auto_on_a_pre_ampere_gpu_gets_fp16_with_a_grad_scaler(gpus, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: ("scaler", device))
    assert runtime.amp_settings("auto", torch.device("cuda:0")) == (torch.float16, ("scaler", "cuda"))
    assert runtime.amp_settings("auto", torch.device("cuda:1")) == (torch.bfloat16, None)


def test_an_explicit_amp_is_kept_whatever_the_gpu(gpus):
    assert runtime.resolve_amp("bf16", torch.device("cuda:0")) == "bf16"


@pytest.fixture
def torchrun(monkeypatch):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)


def test_an_explicit_cuda_index_under_torchrun_is_refused_in_one_line(torchrun, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UsageError, match=r"--device cuda:1 under torchrun \(WORLD_SIZE=2\).*--device cuda ") as error:
        runtime.setup_distributed("cuda:1")
    assert "\n" not in str(error.value)


def test_the_cli_exits_2_for_an_explicit_cuda_index_under_torchrun(torchrun, tmp_path, capsys):
    from train_helpers import tiny_run
    from vitpss.cli import main

    assert main(tiny_run(tmp_path / "run", "--device", "cuda:0")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitpss: error: --device cuda:0 under torchrun") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_single_process_may_name_its_gpu_and_it_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert runtime.setup_distributed("cuda:1")[1] == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")]  # events and the prefetcher's stream then live on cuda:1
    current.clear()
    runtime.setup_distributed("cpu")
    assert current == []
