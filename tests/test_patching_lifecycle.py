"""Attached models as objects: they pickle, deep-copy and are freed by ``del`` alone, in every family."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref

import pytest
import timm
import torch

import vitpss
from vitpss.patching import patch_samplers

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def timm_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **TINY)


def hf_model() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    return transformers.ViTForImageClassification(config)


def open_clip_model() -> torch.nn.Module:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=4, width=32, layers=2, head_width=16),
                          text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))


BUILDERS = {
    "vit": lambda: timm_model("vit_tiny_patch16_224"),
    "beit": lambda: timm_model("beit_base_patch16_224"),
    "eva": lambda: timm_model("eva02_tiny_patch14_224"),
    "hf_vit": hf_model,
    "open_clip": open_clip_model,
}


def images(model: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "visual"):  # open_clip CLIP: the image tower
        return model.encode_image(x)
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("clone", ["pickle", "torch.save", "deepcopy"])
def test_attached_model_clones_and_the_clone_samples_with_its_own_rate(family, clone):
    model = vitpss.attach(BUILDERS[family](), sampler="magnitude").train()
    vitpss.set_keep_rate(model, 0.5)
    if clone == "pickle":
        copied = pickle.loads(pickle.dumps(model))
    elif clone == "torch.save":
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    else:
        copied = copy.deepcopy(model)
    assert type(copied) is type(model)
    planned = [sampler for sampler, _, _ in getattr(copied, "patch_noise_plan", [])]  # HF, open_clip
    assert all(any(sampler is m for m in copied.modules()) for sampler in planned)
    x = images(model)
    torch.testing.assert_close(run(copied, x), run(model, x), rtol=0, atol=0)
    vitpss.set_keep_rate(copied, 1.0)  # the clone has its own samplers
    assert all(s.train_keep_rate == 0.5 for s in patch_samplers(model))


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("forward", [False, True], ids=["fresh", "after_a_step"])
def test_attached_model_is_freed_by_del_without_the_cyclic_garbage_collector(family, forward):
    model = BUILDERS[family]()
    gc.collect()
    gc.disable()
    try:
        vitpss.attach(model, generator=torch.Generator().manual_seed(0)).train()
        vitpss.set_keep_rate(model, 0.5)
        if forward:
            run(model, images(model)).sum().backward()
        refs = [weakref.ref(module) for module in model.modules()]
        del model
        assert not [ref() for ref in refs if ref() is not None], "kept alive by a reference cycle"
    finally:
        gc.enable()


@pytest.mark.parametrize("family", ["vit", "beit"])
def test_stock_timm_model_is_freed_by_del_without_the_cyclic_garbage_collector(family):
    # the baseline the test above relies on: timm's own models hold no cycle
    model = BUILDERS[family]()
    gc.collect()
    gc.disable()
    try:
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_a_user_subclass_keeps_its_own_methods_and_pickles_after_attach():
    model = vitpss.attach(Doubled(**TINY)).train()
    vitpss.set_keep_rate(model, 0.5)
    assert isinstance(model, Doubled) and type(model).__name__ == "Doubled"
    copied = pickle.loads(pickle.dumps(model))
    tokens = torch.randn(1, 65, 32)
    stock = timm.models.vision_transformer.VisionTransformer.forward_head(copied, tokens)
    assert torch.equal(copied.forward_head(tokens), 2 * stock)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="NCHW"):  # the guard still runs on the clone
        copied.forward_intermediates(x)


class Doubled(timm.models.vision_transformer.VisionTransformer):
    """A user subclass with an override of its own."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return 2 * super().forward_head(x, pre_logits)


def cuda_like_rand(monkeypatch) -> None:
    """torch.rand that refuses a generator of another device, as it does for a CPU generator and CUDA tensors."""
    rand = torch.rand

    def checked(*size, device=None, generator=None, **kwargs):
        if generator is not None and torch.device(device or "cpu") != generator.device:
            raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator but found "
                               f"'{generator.device.type}'")
        return rand(*size, device=device, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "rand", checked)


@pytest.mark.parametrize("sampler", ["random", "gumbel-magnitude"])
@pytest.mark.parametrize("drawn", ["in_the_forward", "ahead"])
def test_a_cpu_generator_keeps_working_when_the_tokens_are_on_another_device(monkeypatch, sampler, drawn):
    # attach(model, generator=torch.Generator()) then model.cuda(): here "meta" stands in for the GPU
    cuda_like_rand(monkeypatch)
    generator, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    module = vitpss.PatchSampler(sampler, 1, generator).train()
    module.train_keep_rate = 0.5
    x = torch.randn(2, 17, 8, device="meta")
    if drawn == "ahead":  # what the timm models' pre-hook does
        module.draw_noise(2, 16, x.device)
    out = module(x)
    assert out.shape == (2, 9, 8) and out.device.type == "meta" and module.keep_indices.device.type == "meta"
    torch.rand(2, 16, generator=reference)  # the same draw, made on the generator's device
    assert torch.equal(generator.get_state(), reference.get_state())


def test_data_parallel_replication_is_refused_in_one_line(monkeypatch):
    # nn.DataParallel with several GPUs (what HF Trainer does without torchrun) replicates the model per GPU;
    # here the broadcast is faked so that replicate runs on CPU
    import importlib

    replicate = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [list(tensors) for _ in devices])
    model = vitpss.attach(timm_model("vit_tiny_patch16_224"))
    with pytest.raises(RuntimeError, match=r"^vitpss patch sampling does not support nn.DataParallel: run one "
                                           r"process per GPU with torchrun [^\n]*$"):
        replicate.replicate(model, [0, 1])
    assert len(replicate.replicate(timm_model("vit_tiny_patch16_224"), [0, 1])) == 2  # the fake works unattached
