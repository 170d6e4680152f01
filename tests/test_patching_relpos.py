"""PSS on BEiT (relative position bias) and EVA (RoPE / absolute position embedding) models.

The fast paths are checked against slow per-sample references that select the kept tokens and
their position terms by explicit indexing, one image at a time.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitpss
from vitpss.patching import relpos as patching_relpos
from vitpss.patching.relpos import kept_pair_index

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
GRID = 8  # 32 / 4

BEIT_VARIANTS = {
    "per_block": dict(),  # beit_base: use_rel_pos_bias=True, LayerScale
    "shared": dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
    "shared_and_per_block": dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=True, use_abs_pos_emb=False),
    "token_pool": dict(global_pool="token"),
    "abs_pos_only": dict(use_rel_pos_bias=False, use_abs_pos_emb=True),
}

EVA_MODELS = {
    "eva02_rope_cat": "eva02_tiny_patch14_224",
    "rope_mixed": "vit_small_patch16_rope_mixed_ape_224",
    "dinov3_registers": "vit_small_patch16_dinov3",
    "abs_pos_only": "eva_giant_patch14_224",
}


def _randomise(model: torch.nn.Module) -> None:
    """Non-zero bias tables and embeddings, so that a wrong position cannot go unnoticed, and a
    head of unit scale (BEiT scales it by 0.001 at init), so that logits are of order 1."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in ("relative_position_bias_table", "pos_embed", "cls_token", "head.")):
                p.copy_(torch.randn(p.shape, generator=gen))


def make_beit(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", **TINY, **BEIT_VARIANTS[variant])
    _randomise(model)
    return model


def make_eva(variant: str) -> torch.nn.Module:
    if EVA_MODELS[variant] not in timm.list_models():  # newer than the timm floor (make test-floors)
        pytest.skip(f"timm {timm.__version__} has no {EVA_MODELS[variant]}")
    torch.manual_seed(0)
    model = timm.create_model(EVA_MODELS[variant], **TINY)
    _randomise(model)
    return model


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def relative_index_from_coordinates(positions: list[int]) -> torch.Tensor:
    """BEiT's bias-table row for every pair of tokens (0 = class token, p + 1 = patch p), from 2-D offsets."""
    span = 2 * GRID - 1
    num_distance = span * span + 3
    rows = []
    for qi in positions:
        row = []
        for ki in positions:
            if qi == 0 and ki == 0:
                row.append(num_distance - 1)
            elif qi == 0:
                row.append(num_distance - 3)
            elif ki == 0:
                row.append(num_distance - 2)
            else:
                (qr, qc), (kr, kc) = divmod(qi - 1, GRID), divmod(ki - 1, GRID)
                row.append((qr - kr + GRID - 1) * span + (qc - kc + GRID - 1))
        rows.append(row)
    return torch.tensor(rows)


def beit_reference_logits(model: torch.nn.Module, x: torch.Tensor, keep_indices: torch.Tensor,
                          bias_at_first_positions: bool = False) -> torch.Tensor:
    """One image at a time: select the kept tokens, look every bias up by its 2-D offset, math attention.

    ``bias_at_first_positions`` takes the bias as if the kept tokens were the first patches (a
    wrong implementation, to show that the check can fail).
    """
    logits = []
    for b in range(x.shape[0]):
        tokens = model.patch_embed(x[b:b + 1])
        tokens = torch.cat((model.cls_token, tokens), dim=1)
        if model.pos_embed is not None:
            tokens = tokens + model.pos_embed
        positions = [0] + [int(p) + 1 for p in keep_indices[b]]
        h = tokens[:, positions]
        index = relative_index_from_coordinates(list(range(len(positions))) if bias_at_first_positions else positions)
        shared = 0.0
        if model.rel_pos_bias is not None:
            shared = model.rel_pos_bias.relative_position_bias_table[index].permute(2, 0, 1)
        for block in model.blocks:
            attn = block.attn
            bias = shared
            if attn.relative_position_bias_table is not None:
                bias = bias + attn.relative_position_bias_table[index].permute(2, 0, 1)
            y = block.norm1(h)
            qkv = torch.nn.functional.linear(y, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
            q, k, v = qkv.reshape(len(positions), 3, attn.num_heads, -1).permute(1, 2, 0, 3)
            weights = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
            y = attn.proj((weights @ v).transpose(0, 1).reshape(1, len(positions), -1))
            gamma_1 = 1.0 if block.gamma_1 is None else block.gamma_1
            gamma_2 = 1.0 if block.gamma_2 is None else block.gamma_2
            h = h + gamma_1 * y
            h = h + gamma_2 * block.mlp(block.norm2(h))
        logits.append(model.forward_head(model.norm(h)))
    return torch.cat(logits)


def eva_reference_logits(model: torch.nn.Module, x: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
    """One image at a time: embed all patches, then select kept tokens and their rotary embedding rows."""
    npt = model.num_prefix_tokens
    logits = []
    for b in range(x.shape[0]):
        with vitpss.keep_rate(model, 1.0):
            tokens, rope = model._pos_embed(model.patch_embed(x[b:b + 1]))
        kept = keep_indices[b]
        h = torch.cat((tokens[:, :npt], tokens[:, npt:][:, kept]), dim=1)
        h = model.norm_pre(h)
        for i, block in enumerate(model.blocks):
            block_rope = None
            if rope is not None:
                block_rope = rope[i] if model.rope_mixed else rope
                block_rope = block_rope[..., kept, :]
            h = block(h, rope=block_rope)
        logits.append(model.forward_head(model.norm(h)))
    return torch.cat(logits)


def _sampled_logits(model, x, rate, sampler):
    vitpss.attach(model, sampler=sampler, generator=torch.Generator().manual_seed(3))
    model.eval()
    with vitpss.keep_rate(model, rate):
        out = model(x)
    return out, vitpss.get_keep_indices(model)


@pytest.mark.parametrize("variant", list(BEIT_VARIANTS))
@pytest.mark.parametrize("sampler", ["random", "magnitude"])
def test_beit_logits_match_per_sample_reference_at_kept_positions(variant, sampler):
    model = make_beit(variant)
    x = images()
    with torch.no_grad():
        out, keep = _sampled_logits(model, x, 0.5, sampler)
        expected = beit_reference_logits(model, x, keep)
    assert keep.shape == (3, 32)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("variant", list(EVA_MODELS))
@pytest.mark.parametrize("sampler", ["random", "magnitude"])
def test_eva_logits_match_per_sample_reference_at_kept_positions(variant, sampler):
    model = make_eva(variant)
    x = images()
    with torch.no_grad():
        out, keep = _sampled_logits(model, x, 0.4, sampler)
        expected = eva_reference_logits(model, x, keep)
    assert keep.shape == (3, round(0.4 * 64))
    assert (out - expected).abs().max() < 1e-5


def test_beit_bias_at_wrong_positions_changes_logits():
    """The check above can fail: the bias of the first n positions instead of the kept ones differs."""
    model = make_beit("per_block")
    x = images()
    with torch.no_grad():
        out, keep = _sampled_logits(model, x, 0.5, "random")
        wrong = beit_reference_logits(model, x, keep, bias_at_first_positions=True)
    assert (out - wrong).abs().max() > 1e-3  # 100x the tolerance of the check above


@pytest.mark.parametrize("make,variant", [(make_beit, v) for v in BEIT_VARIANTS] + [(make_eva, v) for v in EVA_MODELS])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rate_one_is_bit_identical_to_unmodified_model(make, variant, mode):
    stock = make(variant)
    model = vitpss.attach(copy.deepcopy(stock), sampler="random")
    vitpss.set_keep_rate(model, 1.0)
    stock.train(mode == "train")
    model.train(mode == "train")
    x = images()
    torch.manual_seed(4)
    expected = stock(x)
    torch.manual_seed(4)
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("make,variant", [(make_beit, v) for v in BEIT_VARIANTS] + [(make_eva, v) for v in EVA_MODELS])
def test_attach_keeps_state_dict_keys_and_adds_no_parameters(make, variant):
    model = make(variant)
    keys = list(model.state_dict())
    num_params = sum(p.numel() for p in model.parameters())
    vitpss.attach(model)
    assert list(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == num_params


@pytest.mark.parametrize("variant", ["per_block", "shared"])
def test_beit_training_step_at_low_rate_reaches_bias_tables(variant):
    model = vitpss.attach(make_beit(variant), sampler="random")
    model.train()
    vitpss.set_keep_rate(model, 0.3)
    loss = torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 1, 2]))
    loss.backward()
    tables = [p for n, p in model.named_parameters() if "relative_position_bias_table" in n]
    assert tables and all(p.grad is not None and p.grad.abs().sum() > 0 for p in tables)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_beit_gradient_checkpointing_gives_the_same_loss():
    model = vitpss.attach(make_beit("per_block"), sampler="magnitude")
    model.train()
    vitpss.set_keep_rate(model, 0.5)
    x = images()
    plain = model(x).sum()
    model.set_grad_checkpointing(True)
    checkpointed = model(x).sum()
    checkpointed.backward()
    assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_eva_training_step_at_low_rate_runs_backward():
    model = vitpss.attach(make_eva("eva02_rope_cat"), sampler="random")
    model.train()
    vitpss.set_keep_rate(model, 0.3)
    assert vitpss.token_count(model, 0.3) == 1 + round(0.3 * 64)
    model(images()).sum().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_eva_grid_intermediates_refuse_a_keep_rate_below_one_and_token_intermediates_work():
    stock = make_eva("eva02_rope_cat")
    model = vitpss.attach(copy.deepcopy(stock)).eval()
    stock.eval()
    x = images()
    assert torch.equal(model.forward_intermediates(x)[1][0], stock.forward_intermediates(x)[1][0])
    with vitpss.keep_rate(model, 0.5):
        with pytest.raises(ValueError, match=r"output_fmt='NCHW'.*keep rate 0.5"):
            model.forward_intermediates(x)
        assert model.forward_intermediates(x, output_fmt="NLC")[1][0].shape == (3, GRID * GRID // 2, 32)


def test_beit_forward_intermediates_runs_all_patches_whatever_the_rate():
    # timm's Beit.forward_intermediates has no patch_drop slot: no sampling, so every grid output works
    model = vitpss.attach(make_beit("per_block")).eval()
    x = images()
    full = model.forward_intermediates(x)[1][0]
    with vitpss.keep_rate(model, 0.5):
        assert torch.equal(model.forward_intermediates(x)[1][0], full) and full.shape == (3, 32, GRID, GRID)
    assert vitpss.token_count(model, 0.5) == 1 + GRID * GRID // 2


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_kept_pair_index_equals_index_from_2d_offsets(data):
    from timm.models.beit import gen_relative_position_index

    keep = sorted(data.draw(st.sets(st.integers(0, GRID * GRID - 1), min_size=1, max_size=12)))
    full = gen_relative_position_index((GRID, GRID))
    got = kept_pair_index(full, torch.tensor([keep]))
    assert torch.equal(got[0], relative_index_from_coordinates([0] + [p + 1 for p in keep]))


def _explicit_attention(q, k, v, table, pair_index):
    bias = table[pair_index].permute(0, 3, 1, 2)  # (B, H, n, n) by plain indexing
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + bias).softmax(-1) @ v


@pytest.mark.parametrize("chunk_elements", [1, 1 << 22])  # one sample per chunk; the whole batch at once
def test_rel_pos_attention_matches_explicit_bias_in_values_and_gradients(monkeypatch, chunk_elements):
    monkeypatch.setattr(patching_relpos, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=gen, requires_grad=True) for _ in range(3))
    table = torch.randn(11, 2, generator=gen, requires_grad=True)
    pair_index = torch.randint(0, 11, (3, 7, 7), generator=gen)
    grad = torch.randn(3, 2, 7, 4, generator=gen)
    got = patching_relpos.rel_pos_attention(q, k, v, table, pair_index)
    got_grads = torch.autograd.grad(got, (q, k, v, table), grad)
    expected = _explicit_attention(q, k, v, table, pair_index)
    expected_grads = torch.autograd.grad(expected, (q, k, v, table), grad)
    assert (got - expected).abs().max() < 1e-5
    for g, e in zip(got_grads, expected_grads):
        assert (g - e).abs().max() < 1e-5


def test_rel_pos_attention_passes_gradcheck_in_double_precision():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    table = torch.randn(9, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    pair_index = torch.randint(0, 9, (2, 5, 5), generator=gen)
    assert torch.autograd.gradcheck(lambda *t: patching_relpos.rel_pos_attention(*t, pair_index), (q, k, v, table))


def test_layer_scaled_linear_passes_gradcheck_in_double_precision():
    gen = torch.Generator().manual_seed(2)
    x, weight, bias, gamma = (torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
                              for shape in ((2, 3, 4), (5, 4), (5,), (5,)))
    assert torch.autograd.gradcheck(patching_relpos._LayerScaledLinear.apply, (x, weight, bias, gamma))


@pytest.mark.parametrize("variant", ["per_block", "shared_and_per_block"])
def test_beit_gradients_match_per_sample_reference_at_kept_positions(variant):
    model = make_beit(variant)
    x = images()
    out, keep = _sampled_logits(model, x, 0.5, "random")
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    expected = torch.autograd.grad(beit_reference_logits(model, x, keep).square().sum(), params, allow_unused=True)
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert (g - e).abs().max() <= 1e-5 * max(1.0, e.abs().max())


def test_beit_keeps_no_attention_map_or_bias_for_backward():
    """Below rate 1 no float (..., n, n) tensor (bias, logits, probabilities) is saved for backward."""
    model = vitpss.attach(make_beit("shared_and_per_block"), sampler="random")
    model.train()
    vitpss.set_keep_rate(model, 0.5)
    n = 1 + vitpss.keep_count(0.5, GRID * GRID)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images()).sum()
    pair_maps = [tuple(t.shape) for t in saved if t.is_floating_point() and tuple(t.shape[-2:]) == (n, n)]
    assert saved and not pair_maps


def test_rel_pos_attention_backward_under_bf16_autocast_keeps_the_logits_in_float32():
    # the backward recomputes q k^T; rounded to bf16 before the softmax, large logits lose ~2% of
    # the gradient (measured: 0.026 for q before the fix, 0.007 after, the rounding of bf16 outputs)
    torch.manual_seed(0)
    B, H, n, d, R = 2, 2, 17, 16, 30
    q, k = ((torch.randn(B, H, n, d) * 3).bfloat16().requires_grad_() for _ in range(2))
    v = torch.randn(B, H, n, d).bfloat16().requires_grad_()
    table, index = torch.randn(R, H).requires_grad_(), torch.randint(0, R, (B, n, n))
    grad_out = torch.randn(B, H, n, d).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patching_relpos.rel_pos_attention(q, k, v, table, index)
    out.backward(grad_out)

    inputs = [t.detach().float().requires_grad_() for t in (q, k, v, table)]
    qf, kf, vf, tf = inputs
    logits = qf @ kf.transpose(-2, -1) * d ** -0.5 + patching_relpos.gather_rel_pos_bias(tf, index)
    (logits.softmax(-1) @ vf).backward(grad_out.float())
    for name, got, reference in zip("qkv", (q.grad, k.grad, v.grad), inputs):
        error = (got.float() - reference.grad).norm() / reference.grad.norm()
        assert error < 0.01, name
    assert (table.grad - tf.grad).norm() / tf.grad.norm() < 0.01
