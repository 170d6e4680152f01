"""Dynamic inference sweep: accuracy, model-only throughput and GFLOPs per keep rate."""

from __future__ import annotations

import pytest
import timm
import torch

import vitpss
from vitpss.errors import UsageError
from vitpss.sweep import accuracy, format_table, parse_rates, sweep_model

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


def test_sweep_rows_have_contract_keys_and_get_cheaper_as_rate_falls(model, batches):
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
    acc1, acc5 = accuracy(model, batches, 1.0, device=torch.device("cpu"))
    assert acc1 == pytest.approx(top1) and acc5 == pytest.approx(top5)


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

    from vitpss.sweep import display_images

    images = torch.rand(2, 1, 8, 8)
    norm = Normalize(mean=(0.1307,), std=(0.3081,))
    dataset = SimpleNamespace(transform=Compose([norm]))
    shown = display_images(norm(images), dataset)
    assert shown.shape == (2, 8, 8, 1)
    assert torch.allclose(torch.from_numpy(shown), images.permute(0, 2, 3, 1), atol=1e-6)
