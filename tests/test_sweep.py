"""Dynamic inference sweep: accuracy, model-only throughput and GFLOPs per keep rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from matplotlib.image import imread

import vitpss
from vitpss.cli import main
from vitpss.errors import UsageError
from vitpss.commands.common import parse_rates
from vitpss.commands.sweep import format_table
from vitpss.inference import sweep_model

CONTRACT_KEYS = {"keep_rate", "acc1", "acc5", "images_per_s", "gflops"}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                            embed_dim=64, depth=2, num_heads=2, num_classes=10)
    return vitpss.attach(net, sampler="magnitude")


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(2)]


@pytest.fixture
def one_thread():
    """Time on one thread: on a busy shared CPU, multi-threaded timings swing by orders of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sweep_rows_have_contract_keys_and_get_cheaper_as_rate_falls(model, batches, one_thread):
    rows = sweep_model(model, batches, [1.0, 0.6, 0.2], warmup=1, repeats=3)
    assert [r["keep_rate"] for r in rows] == [1.0, 0.6, 0.2]
    assert all(CONTRACT_KEYS <= set(r) for r in rows)
    gflops = [r["gflops"] for r in rows]
    assert gflops[0] > gflops[1] > gflops[2] > 0
    assert rows[2]["images_per_s"] > rows[0]["images_per_s"]
    assert [r["tokens"] for r in rows] == [65, 39, 14]


def test_sweep_accuracy_matches_a_plain_evaluation_at_full_rate(model, batches):
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    top1 = 100 * (logits.argmax(1) == targets).float().mean().item()
    top5 = 100 * (logits.topk(5, 1).indices == targets[:, None]).any(1).float().mean().item()
    row = sweep_model(model, batches, [1.0], warmup=0, repeats=1)[0]
    assert row["acc1"] == pytest.approx(top1, abs=1e-3) and row["acc5"] == pytest.approx(top5, abs=1e-3)


def test_sweep_restores_the_model_rates(model, batches):
    vitpss.set_keep_rate(model, 0.4)
    sweep_model(model, batches[:1], [0.5], warmup=0, repeats=1)
    sampler = vitpss.patching.patch_samplers(model)[0]
    assert sampler.train_keep_rate == 0.4 and sampler.inference_keep_rate is None


def test_format_table_lists_every_rate_with_speedup():
    rows = [{"keep_rate": 1.0, "acc1": 90.0, "acc5": 99.0, "images_per_s": 100.0, "gflops": 1.0, "tokens": 65},
            {"keep_rate": 0.5, "acc1": 80.0, "acc5": 95.0, "images_per_s": 180.0, "gflops": 0.5, "tokens": 33}]
    table = format_table(rows).splitlines()
    assert len(table) == 4 and "1.80x" in table[3]


@pytest.mark.parametrize("text", ["", "1.0,abc", "1.5", "0,0.5"])
def test_parse_rates_rejects_bad_keep_rates(text):
    with pytest.raises(UsageError):
        parse_rates(text)


def test_display_images_undo_the_normalisation_of_the_val_transform():
    from types import SimpleNamespace

    from torchvision.transforms import Compose, Normalize

    from vitpss.inference import display_images

    images = torch.rand(2, 1, 8, 8)
    norm = Normalize(mean=(0.1307,), std=(0.3081,))
    dataset = SimpleNamespace(transform=Compose([norm]))
    shown = display_images(norm(images), dataset)
    assert shown.shape == (2, 8, 8, 1)
    assert torch.allclose(torch.from_numpy(shown), images.permute(0, 2, 3, 1), atol=1e-6)


# --------------------------------------------------------------------------- on a trained checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A two-epoch `vitpss train` run of a tiny ViT on synthetic 16x16 images (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "synthetic", "--synthetic-size", "64", "--img-size", "16", "--patch-size", "4",
                 "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--in-chans", "3", "--epochs", "2",
                 "--batch-size", "16", "--output", str(run_dir), "--overwrite", "--quiet", "--device", "cpu"]) == 0
    return run_dir


def test_sweep_command_writes_contract_json_and_plot_beside_the_checkpoint(tiny_run, capsys, one_thread):
    assert main(["sweep", "--checkpoint", str(tiny_run / "best.pt"), "--keep-rates", "1.0,0.5,0.25",
                 "--repeats", "2", "--warmup", "1", "--device", "cpu"]) == 0
    rows = json.loads((tiny_run / "sweep.json").read_text())
    assert [r["keep_rate"] for r in rows] == [1.0, 0.5, 0.25]
    assert all(CONTRACT_KEYS <= set(r) for r in rows)
    assert rows[0]["gflops"] > rows[1]["gflops"] > rows[2]["gflops"]
    assert imread(tiny_run / "sweep.png").shape[:2] == (480, 800)
    assert "| 0.25 |" in capsys.readouterr().out


def test_eval_with_random_patches_gives_the_same_numbers_every_time(tiny_run, capsys):
    # the run's sampler is random: at keep rate 0.5 each eval draws patches from a generator seeded
    # with the run's seed, not from the process's unseeded global RNG
    outputs = []
    for _ in range(2):
        torch.manual_seed(len(outputs))  # a different global RNG state each time
        assert main(["eval", "--checkpoint", str(tiny_run / "best.pt"), "--keep-rate", "0.5", "--device", "cpu"]) == 0
        outputs.append(capsys.readouterr().out.split("(")[0])
    assert outputs[0] == outputs[1]


def test_eval_at_a_keep_rate_gives_the_number_of_sweeps_row_for_it(tiny_run, tmp_path, capsys, one_thread):
    # one seeded draw per rate: the sweep's timing passes and earlier rates do not shift it
    assert main(["sweep", "--checkpoint", str(tiny_run), "--keep-rates", "1.0,0.5,0.25", "--repeats", "1",
                 "--warmup", "1", "--device", "cpu", "--output", str(tmp_path)]) == 0
    rows = {r["keep_rate"]: r for r in json.loads((tmp_path / "sweep.json").read_text())}
    capsys.readouterr()
    for rate in (0.25, 0.5):
        assert main(["eval", "--checkpoint", str(tiny_run), "--keep-rate", str(rate), "--device", "cpu",
                     "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert f"acc1 {rows[rate]['acc1']:.2f}  acc5 {rows[rate]['acc5']:.2f}  loss {rows[rate]['loss']:.4f}" in out


def test_eval_and_sweep_read_only_the_validation_split(tiny_run, monkeypatch):
    import vitpss.inference as inference

    seen = []
    real = inference.build_datasets
    monkeypatch.setattr(inference, "build_datasets", lambda cfg, **kw: seen.append(kw) or real(cfg, **kw))
    loaded = inference.load_checkpoint(tiny_run, device="cpu")
    assert seen == [{"with_train": False}] and len(loaded.val_dataset) > 0


def test_checkpoint_figures_render(tiny_run, tmp_path):
    patches, freq = tmp_path / "patches.png", tmp_path / "freq.pdf"
    assert main(["plot", "patches", "--checkpoint", str(tiny_run / "best.pt"), "--keep-rates", "1.0,0.5",
                 "--n-images", "2", "--device", "cpu", "--output", str(patches)]) == 0
    assert imread(patches).shape[:2] == (420, 370)
    assert main(["plot", "patch-frequency", "--checkpoint", str(tiny_run), "--keep-rate", "0.5",
                 "--sampler", "random", "--device", "cpu", "--output", str(freq)]) == 0
    assert freq.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--checkpoint", "{missing}"], "no checkpoint at"),
    (["sweep", "--checkpoint", "{run}", "--keep-rates", "1.2"], "each must be in (0, 1]"),
    (["plot", "patches", "--checkpoint", "{run}", "--n-images", "0"], "--n-images 0"),
])
def test_checkpoint_commands_report_bad_inputs_on_one_line(tiny_run, tmp_path, capsys, argv, message):
    paths = {"{missing}": str(tmp_path / "nope.pt"), "{run}": str(tiny_run)}
    assert main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
