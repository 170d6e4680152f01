"""PSS in Hugging Face transformers vision models: tiny random configs, no downloads."""

import pytest
import torch

import vitpss

transformers = pytest.importorskip("transformers")

TINY = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)
NUM_PATCHES = (32 // 4) ** 2
LAYERS = {"ViTLayer", "DeiTLayer", "Dinov2Layer", "Dinov2WithRegistersLayer", "CLIPEncoderLayer", "SiglipEncoderLayer"}

# name -> (model class, config class, extra config, prefix tokens)
MODELS = {
    "vit": ("ViTForImageClassification", "ViTConfig", dict(num_labels=5), 1),
    "deit": ("DeiTForImageClassification", "DeiTConfig", dict(num_labels=5), 2),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", dict(num_labels=5), 1),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(num_register_tokens=3), 4),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", {}, 1),
    "siglip_vision": ("SiglipVisionModel", "SiglipVisionConfig", {}, 0),
}


def build(name: str, **overrides):
    model_cls, config_cls, extra, _ = MODELS[name]
    if not hasattr(transformers, model_cls):  # newer than the transformers floor (make test-floors)
        pytest.skip(f"transformers {transformers.__version__} has no {model_cls}")
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**TINY, **extra, **overrides})
    return getattr(transformers, model_cls)(config)


def outputs(model, x) -> list[torch.Tensor]:
    out = model(pixel_values=x)
    return [v for v in out.values() if torch.is_tensor(v)]


def first_block_input(model, x) -> torch.Tensor:
    seen = []
    block = next(m for m in model.modules() if type(m).__name__ in LAYERS)
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
                                             with_kwargs=True)
    outputs(model, x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_at_rate_one_is_bit_identical_and_state_dict_unchanged(name):
    plain, patched = build(name), vitpss.attach(build(name))
    assert list(plain.state_dict()) == list(patched.state_dict())
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in patched.parameters())
    x = torch.randn(2, 3, 32, 32)
    for mode in (True, False):
        plain.train(mode), patched.train(mode)
        for a, b in zip(outputs(plain, x), outputs(patched, x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_at_half_rate_drops_patches_keeps_prefix_and_steps_the_optimizer(name):
    prefix = MODELS[name][3]
    model = vitpss.attach(build(name)).train()
    x = torch.randn(3, 3, 32, 32)
    vitpss.set_keep_rate(model, 0.5)
    tokens = first_block_input(model, x)
    assert tokens.shape[1] == prefix + vitpss.keep_count(0.5, NUM_PATCHES)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    patch_weights = [p for n, p in model.named_parameters() if "patch_embed" in n and n.endswith("weight")]
    before = patch_weights[0].detach().clone()
    sum(o.float().pow(2).sum() for o in outputs(model, x)).backward()
    assert patch_weights[0].grad is not None and patch_weights[0].grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, patch_weights[0])

    model.eval()  # prefix tokens reach the blocks unchanged whatever the rate
    full = first_block_input(model, x)
    with vitpss.keep_rate(model, 0.5):
        assert torch.equal(first_block_input(model, x)[:, :prefix], full[:, :prefix])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_token_count_before_any_forward_is_the_number_of_tokens_reaching_the_blocks(name):
    prefix = MODELS[name][3]
    model = vitpss.attach(build(name, image_size=40, patch_size=8)).train()  # 5 x 5 patches
    counts = {rate: vitpss.token_count(model, rate) for rate in (1.0, 0.5)}
    assert counts == {1.0: prefix + 25, 0.5: prefix + vitpss.keep_count(0.5, 25)}
    for rate, count in counts.items():
        vitpss.set_keep_rate(model, rate)
        assert first_block_input(model, torch.randn(2, 3, 40, 40)).shape[1] == count


@pytest.mark.parametrize("name", ["vit", "siglip_vision"])
def test_eval_uses_all_patches_unless_an_inference_rate_is_set(name):
    prefix = MODELS[name][3]
    model = vitpss.attach(build(name))
    vitpss.set_keep_rate(model, 0.2)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert first_block_input(model, x).shape[1] == prefix + NUM_PATCHES
    vitpss.set_keep_rate(model, 0.6, inference=True)
    assert first_block_input(model, x).shape[1] == prefix + vitpss.keep_count(0.6, NUM_PATCHES)


def test_clip_model_gets_a_sampler_in_its_vision_tower_only():
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=TINY, projection_dim=16)
    model = vitpss.attach(transformers.CLIPModel(config))
    names = [n for n, m in model.named_modules() if isinstance(m, vitpss.PatchSampler)]
    assert names == ["vision_model.embeddings.patch_sampler"]
    vitpss.set_keep_rate(model, 0.5)
    assert first_block_input(model.vision_model, torch.randn(2, 3, 32, 32)).shape[1] == 1 + NUM_PATCHES // 2
    assert vitpss.token_count(model, 0.5) == 1 + NUM_PATCHES // 2


@pytest.mark.parametrize("build_grid_model", [
    lambda: transformers.ViTForMaskedImageModeling(transformers.ViTConfig(**TINY, encoder_stride=4)),
    lambda: transformers.Dinov2Backbone(transformers.Dinov2Config(**TINY, out_indices=[2])),
], ids=["vit_masked_image_modeling", "dinov2_backbone"])
def test_models_that_reshape_tokens_to_the_grid_refuse_a_keep_rate_below_one(build_grid_model):
    model = vitpss.attach(build_grid_model()).train()
    x = torch.randn(2, 3, 32, 32)
    model(pixel_values=x)  # rate 1 works
    vitpss.set_keep_rate(model, 0.5)
    with pytest.raises(ValueError, match="patch grid.*keep rate 0.5"):
        model(pixel_values=x)


def test_dinov2_backbone_without_grid_reshape_runs_at_any_rate():
    model = vitpss.attach(transformers.Dinov2Backbone(
        transformers.Dinov2Config(**TINY, out_indices=[2], reshape_hidden_states=False)))
    vitpss.set_keep_rate(model.train(), 0.5)
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).feature_maps[0].shape[1] == 1 + NUM_PATCHES // 2


class MyViTForImageClassification(transformers.ViTForImageClassification):
    """A user subclass, outside the transformers package."""


def test_a_subclass_of_a_supported_model_and_embeddings_is_attached_as_its_base():
    model = MyViTForImageClassification(transformers.ViTConfig(**TINY, num_labels=5))
    model.vit.embeddings.__class__ = type("MyViTEmbeddings", (type(model.vit.embeddings),), {})
    vitpss.attach(model).train()
    vitpss.set_keep_rate(model, 0.5)
    assert first_block_input(model, torch.randn(2, 3, 32, 32)).shape[1] == 1 + NUM_PATCHES // 2


def test_a_subclass_of_a_grid_model_still_refuses_a_keep_rate_below_one():
    grid_model = type("MyViTForMaskedImageModeling", (transformers.ViTForMaskedImageModeling,), {})
    model = vitpss.attach(grid_model(transformers.ViTConfig(**TINY, encoder_stride=4))).train()
    vitpss.set_keep_rate(model, 0.5)
    with pytest.raises(ValueError, match="patch grid.*keep rate 0.5"):
        model(pixel_values=torch.randn(2, 3, 32, 32))


def tiny_llava():
    text = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**TINY), text_config=text, image_token_index=63))


def tiny_paligemma():
    text = transformers.GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    return transformers.PaliGemmaForConditionalGeneration(transformers.PaliGemmaConfig(
        vision_config=transformers.SiglipVisionConfig(**TINY), text_config=text, image_token_index=63,
        projection_dim=32))


@pytest.mark.parametrize("build_vlm", [tiny_llava, tiny_paligemma], ids=["llava", "paligemma"])
def test_vision_language_wrappers_are_refused_in_one_line(build_vlm):
    model = build_vlm()
    with pytest.raises(TypeError, match=r"^vitpss.attach does not support the vision-language model \w+: its "
                                        r"language model takes one image token per patch[^\n]*$"):
        vitpss.attach(model)
    assert not [m for m in model.modules() if isinstance(m, vitpss.PatchSampler)]


def test_an_attention_mask_is_refused_below_rate_one_and_used_at_rate_one():
    import inspect

    if "attention_mask" not in inspect.signature(transformers.ViTModel.forward).parameters:
        pytest.skip(f"transformers {transformers.__version__}: ViTModel takes no attention_mask")
    model = vitpss.attach(build("vit")).train()
    x, mask = torch.randn(2, 3, 32, 32), torch.ones(2, 1 + NUM_PATCHES, dtype=torch.long)
    plain = build("vit").train()
    assert torch.equal(model(pixel_values=x, attention_mask=mask).logits,
                       plain(pixel_values=x, attention_mask=mask).logits)
    vitpss.set_keep_rate(model, 0.5)
    with pytest.raises(ValueError, match=r"^ViTModel got an attention_mask over all patch tokens but runs at keep "
                                         r"rate 0.5: pass attention_mask=None"):
        model(pixel_values=x, attention_mask=mask)
    model(pixel_values=x)  # without a mask: fine


@pytest.mark.parametrize("name", ["vit", "clip_vision", "siglip_vision"])
def test_noise_drawn_before_the_forward_equals_the_noise_the_forward_draws(name):
    # model(...) draws in the attached model's pre-hook (what torch.compile needs); model.forward(...) skips it
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kept, states = [], []
    for call in ("__call__", "forward"):
        generator = torch.Generator().manual_seed(5)
        model = vitpss.attach(build(name), sampler="random", generator=generator).train()
        vitpss.set_keep_rate(model, 0.5)
        for _ in range(2):
            getattr(model, call)(pixel_values=x)
            kept.append(vitpss.get_keep_indices(model))
        states.append(generator.get_state())
    assert all(torch.equal(a, b) for a, b in zip(kept[:2], kept[2:]))
    assert torch.equal(*states)
