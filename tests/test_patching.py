"""PSS on stock timm ViTs: tokens reaching the blocks, bit-identity at rate 1, mode rules, errors."""

import copy
import pickle
import re
from pathlib import Path

import pytest
import timm
import torch

import vitpss
from vitpss.patching import PatchSampler

GRID = [1.0, 0.8, 0.6, 0.4, 0.2]
TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)

VARIANTS = {
    "vit_cls_token": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "deit3_no_embed_class": ("deit3_small_patch16_224", {"embed_dim": 32, "num_heads": 2}),
    "registers_avg_pool": ("vit_base_patch16_224", {"class_token": False, "reg_tokens": 4, "global_pool": "avg"}),
    "map_pool": ("vit_base_patch16_224", {"global_pool": "map", "class_token": False}),
    "patch8_img40": ("vit_small_patch16_224", {"img_size": 40, "patch_size": 8}),
}


def tiny(name="vit_tiny_patch16_224", **overrides):
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, **overrides})


def tokens_into_first_block(model, x):
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    out = model(x)
    handle.remove()
    return seen[0], out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("sampler", sorted(vitpss.SAMPLERS))
def test_tokens_reaching_first_block_follow_the_keep_rate(variant, sampler):
    name, overrides = VARIANTS[variant]
    model = vitpss.attach(tiny(name, **overrides), sampler=sampler)
    num_patches, prefix = model.patch_embed.num_patches, model.num_prefix_tokens
    x = torch.randn(3, 3, *model.patch_embed.img_size)
    model.train()
    for rate in GRID:
        vitpss.set_keep_rate(model, rate)
        n, out = tokens_into_first_block(model, x)
        assert n == prefix + vitpss.keep_count(rate, num_patches) == vitpss.token_count(model, rate)
        out.float().sum().backward()
        assert model.patch_embed.proj.weight.grad is not None
        model.zero_grad()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_at_rate_one_is_bit_identical_to_unmodified_model(variant):
    name, overrides = VARIANTS[variant]
    plain = tiny(name, **overrides)
    patched = vitpss.attach(tiny(name, **overrides))
    x = torch.randn(2, 3, *plain.patch_embed.img_size)
    for mode in (True, False):
        plain.train(mode), patched.train(mode)
        torch.manual_seed(1)
        a = plain(x)
        torch.manual_seed(1)
        b = patched(x)
        assert torch.equal(a, b)


def test_state_dict_keys_and_values_are_unchanged_and_load_into_stock_timm():
    plain = tiny()
    patched = vitpss.attach(tiny())
    assert list(plain.state_dict()) == list(patched.state_dict())
    fresh = timm.create_model("vit_tiny_patch16_224", **TINY)
    fresh.load_state_dict(patched.state_dict())


def test_eval_mode_uses_all_patches_unless_an_inference_rate_is_set():
    model = vitpss.attach(tiny())
    x = torch.randn(2, 3, 32, 32)
    vitpss.set_keep_rate(model, 0.4)
    model.eval()
    assert tokens_into_first_block(model, x)[0] == 65
    with vitpss.keep_rate(model, 0.5):
        assert tokens_into_first_block(model, x)[0] == 33
    assert tokens_into_first_block(model, x)[0] == 65
    vitpss.set_keep_rate(model, 0.25, inference=True)
    assert tokens_into_first_block(model, x)[0] == 17
    model.train()
    assert tokens_into_first_block(model, x)[0] == 1 + 26  # training rate 0.4 still in force


def test_keep_rate_context_applies_in_train_mode_and_restores_previous_rates():
    model = vitpss.attach(tiny()).train()
    vitpss.set_keep_rate(model, 0.8)
    with vitpss.keep_rate(model, 0.2):
        assert tokens_into_first_block(model, torch.randn(1, 3, 32, 32))[0] == 1 + 13
    sampler = model.patch_drop
    assert sampler.train_keep_rate == 0.8 and sampler.inference_keep_rate is None


def test_keep_indices_are_exposed_after_a_sampled_forward():
    model = vitpss.attach(tiny(), sampler="magnitude").eval()
    with vitpss.keep_rate(model, 0.5):
        model(torch.randn(2, 3, 32, 32))
        idx = vitpss.get_keep_indices(model)
    assert idx.shape == (2, 32)
    model(torch.randn(2, 3, 32, 32))
    assert vitpss.get_keep_indices(model) is None


def test_attach_replaces_an_existing_timm_patch_dropout():
    model = vitpss.attach(tiny(patch_drop_rate=0.5))
    assert isinstance(model.patch_drop, PatchSampler)


def test_set_sampler_switches_the_sampler():
    model = vitpss.attach(tiny(), sampler="magnitude")
    vitpss.set_sampler(model, "random")
    assert model.patch_drop.sampler == "random"


def test_attach_rejects_a_resnet_with_type_error_naming_class_and_families():
    model = timm.create_model("resnet18", num_classes=3)
    with pytest.raises(TypeError, match=r"ResNet.*supported families are .*VisionTransformer"):
        vitpss.attach(model)


@pytest.mark.parametrize("call", [vitpss.set_keep_rate, vitpss.token_count], ids=["set_keep_rate", "token_count"])
def test_calls_before_attach_say_to_attach(call):
    with pytest.raises(TypeError, match="VisionTransformer has no patch sampler: call vitpss.attach"):
        call(tiny(), 0.5)


def test_token_count_of_a_dynamic_size_vit_counts_the_configured_image_size():
    model = vitpss.attach(tiny(dynamic_img_size=True, img_size=(32, 48)))
    assert vitpss.token_count(model, 1.0) == 1 + 8 * 12 and vitpss.token_count(model, 0.5) == 1 + 48


@pytest.mark.parametrize("variant", ["vit_cls_token", "registers_avg_pool"])
def test_grid_intermediates_refuse_a_keep_rate_below_one_and_token_intermediates_are_untouched(variant):
    name, overrides = VARIANTS[variant]
    plain, model = tiny(name, **overrides), vitpss.attach(tiny(name, **overrides)).train()
    x = torch.randn(2, 3, 32, 32)
    for fmt in ("NCHW", "NLC"):  # rate 1: the unmodified model's output
        expected, got = plain.forward_intermediates(x, output_fmt=fmt), model.forward_intermediates(x, output_fmt=fmt)
        assert torch.equal(expected[0], got[0]) and all(torch.equal(a, b) for a, b in zip(expected[1], got[1]))

    vitpss.set_keep_rate(model, 0.5)
    for kwargs in ({}, {"output_fmt": "NCHW", "intermediates_only": True}):
        with pytest.raises(ValueError, match=r"output_fmt='NCHW'.*keep rate 0.5: pass output_fmt='NLC'"):
            model.forward_intermediates(x, **kwargs)
    torch.manual_seed(1)
    tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
    torch.manual_seed(1)
    stock = type(model).forward_intermediates(model, x, output_fmt="NLC", intermediates_only=True)
    assert tokens[0].shape == (2, 32, 32) and all(torch.equal(a, b) for a, b in zip(tokens, stock))


def test_attached_vit_survives_pickle_and_deepcopy_with_its_grid_check():
    model = vitpss.attach(tiny()).train()
    vitpss.set_keep_rate(model, 0.5)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        with pytest.raises(ValueError, match="NCHW"):
            clone.forward_intermediates(torch.randn(1, 3, 32, 32))
        vitpss.set_keep_rate(clone, 1.0)  # the check reads the clone's own sampler
        assert clone.forward_intermediates(torch.randn(1, 3, 32, 32))[1][0].shape == (1, 32, 8, 8)


@pytest.mark.parametrize("rate", [0, -1, 1.5, float("nan")])
def test_set_keep_rate_rejects_invalid_rates(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        vitpss.set_keep_rate(vitpss.attach(tiny()), rate)


@pytest.mark.parametrize("rate", ["0.5", None, True, [0.5]])
def test_set_keep_rate_refuses_a_rate_that_is_not_a_number(rate):
    model = vitpss.attach(tiny())
    for call in (lambda: vitpss.set_keep_rate(model, rate), lambda: vitpss.keep_rate(model, rate).__enter__()):
        with pytest.raises(TypeError, match="is not a number: give a float in"):
            call()


def test_get_keep_indices_is_none_when_every_patch_was_kept():
    model = vitpss.attach(tiny(), sampler="random").train()
    assert vitpss.get_keep_indices(model) is None  # before any forward
    vitpss.set_keep_rate(model, 1.0)
    model(torch.randn(2, 3, 32, 32))
    assert vitpss.get_keep_indices(model) is None
    vitpss.set_keep_rate(model, 0.5)
    model(torch.randn(2, 3, 32, 32))
    assert vitpss.get_keep_indices(model).shape == (2, vitpss.token_count(model, 0.5) - 1)


def test_seeded_random_sampler_is_reproducible():
    outs = []
    for _ in range(2):
        model = vitpss.attach(tiny(), sampler="random", generator=torch.Generator().manual_seed(7)).train()
        vitpss.set_keep_rate(model, 0.4)
        model.forward(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        outs.append(vitpss.get_keep_indices(model))
    assert torch.equal(*outs)


def test_readme_api_example_runs_as_written():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 10)


def test_gumbel_magnitude_samples_in_training_and_is_deterministic_top_k_in_eval():
    model = vitpss.attach(tiny(), sampler="gumbel-magnitude")
    x = torch.randn(4, 3, 32, 32)
    model.train()
    vitpss.set_keep_rate(model, 0.3)
    picks = set()
    for _ in range(5):
        model(x)
        picks.add(tuple(vitpss.get_keep_indices(model).flatten().tolist()))
    assert len(picks) > 1
    model.eval()
    with vitpss.keep_rate(model, 0.3):
        model(x)
        eval_idx = vitpss.get_keep_indices(model)
        vitpss.set_sampler(model, "magnitude")
        model(x)
        assert torch.equal(eval_idx, vitpss.get_keep_indices(model))


@pytest.mark.parametrize("sampler", sorted(vitpss.SAMPLERS))
def test_two_runs_with_the_same_generator_seed_keep_the_same_patches_and_leave_the_global_rng(sampler):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kept = []
    global_state = torch.get_rng_state()
    for _ in range(2):
        model = vitpss.attach(tiny(), sampler=sampler, generator=torch.Generator().manual_seed(5)).train()
        vitpss.set_keep_rate(model, 0.5)
        torch.set_rng_state(global_state)  # model init drew from it; the sampler must not
        model(x)
        kept.append(vitpss.get_keep_indices(model))
        assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(kept[0], kept[1])


def test_default_models_linear_patch_embedding_equals_timms_convolution():
    from timm.layers import PatchEmbed

    model = timm.create_model("vitpss_tiny_mnist")
    reference = PatchEmbed(img_size=28, patch_size=7, in_chans=1, embed_dim=64)
    reference.load_state_dict(model.patch_embed.state_dict())
    x = torch.randn(3, 1, 28, 28)
    out, expected = model.patch_embed(x), reference(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(model.patch_embed.proj.weight.grad, reference.proj.weight.grad, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError, match="doesn't match model"):  # other sizes: timm's checks and convolution
        model.patch_embed(torch.randn(1, 1, 35, 35))


TIMM_FAMILIES = {"vit": "vit_tiny_patch16_224", "beit": "beit_base_patch16_224", "eva": "eva02_tiny_patch14_224"}


@pytest.mark.parametrize("family", sorted(TIMM_FAMILIES))
@pytest.mark.parametrize("sampler", ["random", "gumbel-magnitude"])
def test_noise_drawn_before_the_forward_equals_the_noise_the_forward_draws(family, sampler):
    # model(x) draws in the pre-hook (what torch.compile needs); model.forward(x) skips hooks and draws inside
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kept, states = [], []
    for call in ("__call__", "forward"):
        generator = torch.Generator().manual_seed(5)
        model = vitpss.attach(tiny(TIMM_FAMILIES[family]), sampler=sampler, generator=generator).train()
        vitpss.set_keep_rate(model, 0.5)
        for _ in range(2):
            getattr(model, call)(x)
            kept.append(vitpss.get_keep_indices(model))
        states.append(generator.get_state())
        assert model.patch_drop.noise is None  # used up by the forward
    assert all(torch.equal(a, b) for a, b in zip(kept[:2], kept[2:]))
    assert torch.equal(*states)


@pytest.mark.parametrize("sampler,mode,rate", [("random", "train", 1.0), ("magnitude", "train", 0.5),
                                               ("gumbel-magnitude", "eval", 0.5)])
def test_pre_hook_draws_nothing_when_the_forward_samples_without_noise(sampler, mode, rate):
    generator = torch.Generator().manual_seed(5)
    model = getattr(vitpss.attach(tiny(), sampler=sampler, generator=generator), mode)()
    before = generator.get_state()
    with vitpss.keep_rate(model, rate):
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(generator.get_state(), before)


def test_attaching_twice_keeps_one_noise_hook():
    model = vitpss.attach(vitpss.attach(tiny(), sampler="magnitude"), sampler="random")
    assert len(model._forward_pre_hooks) == 1


def test_noise_drawn_for_other_tokens_is_replaced_by_a_fresh_draw():
    x = torch.randn(3, 17, 8)
    kept = []
    for stale in (None, torch.rand(2, 16)):  # e.g. left by a forward that failed before the sampler
        sampler = PatchSampler("random", 1, torch.Generator().manual_seed(5)).train()
        sampler.train_keep_rate, sampler.noise = 0.5, stale
        sampler(x)
        kept.append(sampler.keep_indices)
    assert torch.equal(*kept)


@pytest.mark.parametrize("family", sorted(TIMM_FAMILIES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attached_at_rate_one_equals_the_installed_timm_model_bit_for_bit_forward_and_backward(family, mode):
    plain = getattr(tiny(TIMM_FAMILIES[family], drop_path_rate=0.1), mode)()
    patched = getattr(vitpss.attach(copy.deepcopy(plain), sampler="random",
                                    generator=torch.Generator().manual_seed(0)), mode)()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = []
    for model in (plain, patched):
        torch.manual_seed(1)  # the same drop-path draws
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    assert torch.equal(*outputs)
    for (name, p), q in zip(plain.named_parameters(), patched.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_attached_beit_at_rate_one_runs_the_installed_timms_forward_not_a_copy(monkeypatch):
    # a later timm that changes Beit.forward_features is followed at rate 1
    from timm.models.beit import Beit

    stock = Beit.forward_features
    monkeypatch.setattr(Beit, "forward_features", lambda self, x: 0.5 * stock(self, x))
    plain = tiny("beit_base_patch16_224").train()
    patched = vitpss.attach(copy.deepcopy(plain)).train()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain(x), patched(x))


class SubclassedViT(timm.models.vision_transformer.VisionTransformer):
    """A user's ViT subclass with a family of its own."""


@pytest.mark.parametrize("priority", [0, 5])
def test_a_family_registered_for_a_vit_subclass_takes_precedence_over_the_built_in_one(monkeypatch, priority):
    from vitpss.patching import core

    monkeypatch.setattr(core, "_FAMILIES", list(core._FAMILIES))
    installed = []
    vitpss.patching.register_family("user ViT subclass", lambda m: isinstance(m, SubclassedViT),
                                    lambda m, sampler, generator: installed.append(type(m).__name__), priority)
    vitpss.attach(SubclassedViT(**TINY))
    assert installed == ["SubclassedViT"]
    assert isinstance(vitpss.attach(tiny()).patch_drop, PatchSampler)  # other ViTs: the built-in family
    assert vitpss.supported_families()[-1] == "user ViT subclass"


def test_a_lower_priority_family_does_not_shadow_the_built_in_one(monkeypatch):
    from vitpss.patching import core

    monkeypatch.setattr(core, "_FAMILIES", list(core._FAMILIES))
    vitpss.patching.register_family("fallback", lambda m: True, lambda m, sampler, generator: None, priority=-1)
    assert isinstance(vitpss.attach(SubclassedViT(**TINY)).patch_drop, PatchSampler)
