"""create_adamw: timm's parameter groups with torch's fused AdamW kernel."""

from __future__ import annotations

import copy

import torch
from timm.optim import create_optimizer_v2

from vitpss.optim import create_adamw
from vitpss.models import vitpss_tiny_mnist


def test_adamw_is_fused_on_cpu_and_matches_timms_per_parameter_adamw():
    torch.manual_seed(0)
    model = vitpss_tiny_mnist(depth=1)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    fused = create_adamw(model, lr=1e-2, weight_decay=0.05)
    looped = create_optimizer_v2(reference, "adamw", lr=1e-2, weight_decay=0.05)
    assert fused.defaults["fused"] is True and not looped.defaults.get("fused")
    assert [len(g["params"]) for g in fused.param_groups] == [len(g["params"]) for g in looped.param_groups]
    assert [g["weight_decay"] for g in fused.param_groups] == [0.0, 0.05]  # no decay on biases and norms
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        for net, opt in ((model, fused), (reference, looped)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0, msg=name)  # updates are ~lr = 1e-2
    assert not torch.equal(model.head.weight, initial.head.weight)  # the steps did update


def test_layer_decay_groups_are_kept():
    model = vitpss_tiny_mnist()
    opt = create_adamw(model, lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    scales = sorted({round(g["lr_scale"], 4) for g in opt.param_groups})
    assert len(scales) == 6 and scales[-1] == 1.0  # patch embed, 4 blocks, head
