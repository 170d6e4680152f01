"""PSS in open_clip image towers and whole CLIP models: tiny random configs, no downloads."""

import pytest
import torch

import vitpss

open_clip = pytest.importorskip("open_clip")

TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
VIT = dict(image_size=32, patch_size=4, width=32, layers=2, head_width=16)
NUM_PATCHES = (32 // 4) ** 2


def clip(**vision):
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg={**VIT, **vision}, text_cfg=TEXT)


def tokens_into_first_block(tower, x) -> torch.Tensor:
    blocks = tower.trunk.blocks if hasattr(tower, "trunk") else tower.transformer.resblocks
    seen = []
    handle = blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    tower(x)
    handle.remove()
    batch_first = hasattr(tower, "trunk") or getattr(tower.transformer, "batch_first", False)
    return seen[0] if batch_first else seen[0].transpose(0, 1)  # open_clip < 2.26: (tokens, batch, width)


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_clip_output_at_rate_one_is_bit_identical_and_state_dict_unchanged(pool_type):
    plain, patched = clip(pool_type=pool_type), vitpss.attach(clip(pool_type=pool_type))
    assert list(plain.state_dict()) == list(patched.state_dict())
    x, text = torch.randn(2, 3, 32, 32), torch.randint(0, 64, (2, 8))
    for mode in (True, False):
        plain.train(mode), patched.train(mode)
        for a, b in zip(plain(x, text), patched(x, text)):
            assert torch.equal(a, b)


def test_vision_tower_trains_at_half_rate_with_the_class_token_kept():
    model = vitpss.attach(clip(patch_dropout=0.5))  # open_clip's fixed-rate PatchDropout is replaced
    assert isinstance(model.visual.patch_dropout, vitpss.PatchSampler)
    assert [n for n, m in model.named_modules() if isinstance(m, vitpss.PatchSampler)] == ["visual.patch_dropout"]
    x, text = torch.randn(3, 3, 32, 32), torch.randint(0, 64, (3, 8))
    vitpss.set_keep_rate(model.train(), 0.5)
    assert tokens_into_first_block(model.visual, x).shape[1] == 1 + NUM_PATCHES // 2

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.visual.conv1.weight.detach().clone()
    image, text_features, scale = model(x, text)
    (image @ text_features.t()).sum().backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.visual.conv1.weight)

    assert vitpss.token_count(model, 0.5) == vitpss.token_count(model.visual, 0.5) == 1 + NUM_PATCHES // 2

    model.eval()  # all patches in eval, an inference rate on request; the class token is always first
    full = tokens_into_first_block(model.visual, x)
    assert full.shape[1] == 1 + NUM_PATCHES
    with vitpss.keep_rate(model, 0.25):
        dropped = tokens_into_first_block(model.visual, x)
    assert dropped.shape[1] == 1 + NUM_PATCHES // 4 and torch.equal(dropped[:, 0], full[:, 0])


def test_timm_tower_gets_the_timm_sampler_in_its_trunk():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(timm_model_name="vit_tiny_patch16_224", image_size=224),
                           text_cfg=TEXT)
    vitpss.attach(model)
    assert [n for n, m in model.named_modules() if isinstance(m, vitpss.PatchSampler)] == ["visual.trunk.patch_drop"]
    vitpss.set_keep_rate(model.train(), 0.5)
    x = torch.randn(1, 3, 224, 224)
    assert tokens_into_first_block(model.visual, x).shape[1] == 1 + 196 // 2
    assert vitpss.token_count(model, 0.5) == 1 + 196 // 2
    if hasattr(type(model.visual), "forward_intermediates"):  # open_clip >= 2.32
        with pytest.raises(ValueError, match="NCHW"):
            model.visual.forward_intermediates(x)


def test_token_count_of_a_non_square_tower_before_any_forward():
    model = vitpss.attach(clip(image_size=(32, 48)))
    assert vitpss.token_count(model, 1.0) == 1 + 8 * 12 and vitpss.token_count(model, 0.5) == 1 + 48
    vitpss.set_keep_rate(model.train(), 0.5)
    assert tokens_into_first_block(model.visual, torch.randn(2, 3, 32, 48)).shape[1] == 1 + 48


def test_grid_intermediates_refuse_a_keep_rate_below_one_and_token_intermediates_work():
    if not hasattr(open_clip.transformer.VisionTransformer, "forward_intermediates"):
        pytest.skip("open_clip < 2.32 has no forward_intermediates")
    tower = vitpss.attach(clip()).visual
    x = torch.randn(2, 3, 32, 32)
    assert tower.forward_intermediates(x)["image_intermediates"][0].shape == (2, 32, 8, 8)
    vitpss.set_keep_rate(tower.train(), 0.5)
    with pytest.raises(ValueError, match="NCHW.*keep rate 0.5"):
        tower.forward_intermediates(x)
    assert tower.forward_intermediates(x, output_fmt="NLC")["image_intermediates"][0].shape == (2, NUM_PATCHES // 2, 32)


def test_resnet_tower_is_not_supported():
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=32), text_cfg=TEXT)
    with pytest.raises(TypeError, match="does not support CLIP: supported families are .*open_clip"):
        vitpss.attach(model)


def test_a_tower_without_forward_intermediates_gets_no_guard(monkeypatch):
    # open_clip 2.24-2.30: VisionTransformer has no forward_intermediates
    monkeypatch.delattr(open_clip.transformer.VisionTransformer, "forward_intermediates", raising=False)
    model = vitpss.attach(clip())
    assert not hasattr(model.visual, "forward_intermediates")
    vitpss.set_keep_rate(model.train(), 0.5)
    model.visual(torch.randn(2, 3, 32, 32))
    assert vitpss.get_keep_indices(model).shape == (2, NUM_PATCHES // 2)
