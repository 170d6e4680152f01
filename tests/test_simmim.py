"""SimMIM masked image modelling: masks, mask token, decoder shape, loss on masked pixels only."""

from __future__ import annotations

import pytest
import timm
import torch

from vitpss.simmim import SimMIM, random_patch_mask


def tiny_simmim(name: str = "beit_base_patch16_224") -> SimMIM:
    torch.manual_seed(0)
    encoder = timm.create_model(name, img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                                num_classes=0)
    return SimMIM(encoder)


@pytest.mark.parametrize("mask_patch_size,ratio", [(4, 0.6), (8, 0.5), (16, 0.3)])
def test_mask_masks_ceil_ratio_of_blocks_in_whole_blocks(mask_patch_size, ratio):
    mask = random_patch_mask(5, 32, 4, mask_patch_size, ratio, generator=torch.Generator().manual_seed(0))
    scale = mask_patch_size // 4
    blocks = (32 // mask_patch_size) ** 2
    assert mask.shape == (5, 8, 8)
    assert torch.equal(mask.sum(dim=(1, 2)), torch.full((5,), float(-(-blocks * ratio // 1) * scale ** 2)))
    block_view = mask.view(5, 8 // scale, scale, 8 // scale, scale)
    assert torch.equal(block_view.amin(dim=(2, 4)), block_view.amax(dim=(2, 4)))  # constant within each block


def test_mask_rejects_sizes_that_do_not_nest():
    with pytest.raises(ValueError, match="mask_patch_size=6"):
        random_patch_mask(1, 32, 4, 6, 0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, 32, 4, 8, 1.0)


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "vit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_fully_masked_images_are_encoded_without_their_pixels(name):
    model = tiny_simmim(name).eval()
    mask = torch.ones(2, 8, 8)
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    assert torch.allclose(model.encode(a, mask), model.encode(b, mask), atol=1e-6)
    assert not torch.allclose(model.encode(a, mask * 0), model.encode(b, mask * 0), atol=1e-3)


def test_loss_depends_only_on_masked_pixels_of_the_reconstruction():
    model = tiny_simmim()
    images = torch.randn(2, 1, 32, 32)
    mask = random_patch_mask(2, 32, 4, 8, 0.5, generator=torch.Generator().manual_seed(1))
    loss, reconstruction = model(images, mask)
    assert reconstruction.shape == images.shape
    grad, = torch.autograd.grad(loss, reconstruction)
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).bool()
    assert (grad[~pixel_mask.expand_as(grad)] == 0).all()
    assert (grad[pixel_mask.expand_as(grad)] != 0).all()


def test_a_few_steps_on_one_batch_lower_the_loss():
    model = tiny_simmim()
    images = torch.randn(4, 1, 1, 1).expand(4, 1, 32, 32)  # masked pixels predictable from visible ones
    mask = random_patch_mask(4, 32, 4, 8, 0.6, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _ = model(images, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "vit_base_patch16_224"])
def test_compiled_simmim_is_one_graph_without_a_break_and_matches_eager(name):
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    model = tiny_simmim(name)
    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()
    net = torch.compile(model, backend=backend, dynamic=False)
    images = torch.randn(2, 1, 32, 32)
    try:
        for seed in range(3):  # a new mask each step, as in pre-training
            mask = model.random_mask(2, images.device, torch.Generator().manual_seed(seed))
            loss, _ = net(images, mask)
            loss.backward()
            assert torch.equal(loss, model(images, mask)[0])
        assert backend.frame_count == 1 and not counters["graph_break"]
        assert model.encoder.patch_embed.masking is None and not model.encoder.patch_embed._forward_hooks
    finally:
        torch._dynamo.reset()


def test_simmim_and_its_encoder_pickle_and_the_encoder_state_dict_is_timms():
    import pickle

    model = tiny_simmim()
    clone = pickle.loads(pickle.dumps(model))
    images, mask = torch.randn(2, 1, 32, 32), torch.ones(2, 8, 8)
    assert torch.equal(clone(images, mask)[0], model(images, mask)[0])
    stock = timm.create_model("beit_base_patch16_224", img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2,
                              num_heads=2, num_classes=0)
    assert list(stock.state_dict()) == list(model.encoder.state_dict())
