"""Loading pre-trained weights: SimMIM layout, timm files, our checkpoints, clear mismatch errors."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.beit import gen_relative_position_index

from vitpss.errors import UsageError
from vitpss.weights import load_pretrained

TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, init_values=0.1)


def simmim_encoder(img_size: int = 32) -> torch.nn.Module:
    """A SimMIM ViT pre-training encoder: shared relative position bias, no APE, final norm."""
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", img_size=img_size, num_classes=0, global_pool="",
                              use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True, **TINY)
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
    return model


def simmim_finetune_model(img_size: int = 32) -> torch.nn.Module:
    """The SimMIM ViT-B fine-tuning architecture in miniature: per-block bias, mean pooling."""
    torch.manual_seed(1)
    return timm.create_model("beit_base_patch16_224", img_size=img_size, num_classes=5, use_abs_pos_emb=False,
                             use_rel_pos_bias=True, use_shared_rel_pos_bias=False, **TINY)


def save_simmim_checkpoint(encoder: torch.nn.Module, path) -> None:
    """The official file layout: {'model': {'encoder.*', 'encoder.mask_token', 'decoder.*'}, ...}."""
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    grid = encoder.patch_embed.grid_size
    state["encoder.rel_pos_bias.relative_position_index"] = gen_relative_position_index(grid)
    state["encoder.mask_token"] = torch.zeros(1, 1, 32)
    state["decoder.0.weight"] = torch.randn(4 * 4 * 3, 32, 1, 1)
    state["decoder.0.bias"] = torch.zeros(4 * 4 * 3)
    torch.save({"model": state, "epoch": 799, "config": "..."}, path)


def test_simmim_checkpoint_shared_bias_is_copied_to_every_block(tmp_path):
    encoder = simmim_encoder()
    save_simmim_checkpoint(encoder, tmp_path / "simmim.pth")
    model = simmim_finetune_model()
    report = load_pretrained(model, tmp_path / "simmim.pth")
    shared = encoder.rel_pos_bias.relative_position_bias_table
    for block, source in zip(model.blocks, encoder.blocks):
        assert torch.equal(block.attn.relative_position_bias_table, shared)
        assert torch.equal(block.attn.qkv.weight, source.attn.qkv.weight)
        assert torch.equal(block.gamma_1, source.gamma_1)
    assert torch.equal(model.patch_embed.proj.weight, encoder.patch_embed.proj.weight)
    assert report.new == ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
    assert report.ignored == ["decoder.0.bias", "decoder.0.weight", "mask_token", "norm.bias", "norm.weight"]
    assert "copied to 2 blocks" in report.summary()


def test_simmim_bias_tables_are_resized_when_the_grid_differs(tmp_path):
    encoder = simmim_encoder(img_size=32)  # grid 8
    save_simmim_checkpoint(encoder, tmp_path / "simmim.pth")
    model = simmim_finetune_model(img_size=48)  # grid 12
    report = load_pretrained(model, tmp_path / "simmim.pth")
    old = encoder.rel_pos_bias.relative_position_bias_table
    new = model.blocks[0].attn.relative_position_bias_table
    assert new.shape == ((2 * 12 - 1) ** 2 + 3, 2)
    assert torch.equal(new[-3:], old[-3:])  # class-token rows carried over unchanged
    centre_old, centre_new = (15 * 15) // 2, (23 * 23) // 2  # zero offset
    assert torch.allclose(new[centre_new], old[centre_old], atol=1e-4)
    assert "resized" in report.summary()


def test_timm_safetensors_file_loads_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=1000)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=10)
    report = load_pretrained(model, tmp_path / "model.safetensors")
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.pos_embed, source.pos_embed)
    assert model.head.weight.shape == (10, 192)
    assert report.ignored == ["head.bias", "head.weight"]


def test_training_checkpoint_with_config_and_rng_state_loads(tmp_path):
    source = simmim_finetune_model()
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()},
                "config": {"model": "beit"}, "numpy_rng": np.random.get_state(), "step": 3}, tmp_path / "ckpt.pt")
    model = simmim_finetune_model()
    with torch.no_grad():
        model.head.weight.zero_()
    report = load_pretrained(model, tmp_path / "ckpt.pt")
    assert torch.equal(model.head.weight, source.head.weight)
    assert report.new == [] and report.ignored == []


def test_weights_of_another_architecture_raise_listing_the_keys(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=5)
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    with pytest.raises(UsageError, match=r"missing from the file: .*blocks\.0\.attn\.relative_position_bias_table"
                                         r".*not in the model: .*blocks\.0\.attn\.qkv\.bias"):
        load_pretrained(simmim_finetune_model(), tmp_path / "vit.pt")


def test_missing_or_unreadable_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_pretrained(simmim_finetune_model(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="cannot read"):
        load_pretrained(simmim_finetune_model(), tmp_path / "junk.pt")
