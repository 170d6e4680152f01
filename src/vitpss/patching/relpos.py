"""Patch sampling for timm models whose attention needs token positions: BEiT and EVA.

**BEiT** (``timm.models.beit.Beit``; also SimMIM's ViT) adds a relative position bias to the
attention logits, per block and/or shared by all blocks. After sampling, query ``i`` and key
``j`` are the kept tokens ``p_i`` and ``p_j``, so their bias is ``table[index[p_i, p_j]]``, where
``index`` is the model's ``relative_position_index``. :func:`kept_pair_index` gathers that index
once per forward for the kept pairs only, ``(B, n, n)``; each block then attends with
:func:`rel_pos_attention`, which looks its table (plus the shared one) up inside attention: the
forward feeds the fused ``scaled_dot_product_attention`` kernel the bias of a few samples at a
time, the backward recomputes the logits chunk by chunk (as flash attention does) and scatters the
bias gradient into the table. No ``(B, H, n, n)`` bias or attention map is kept for backward, and
LayerScale (``gamma * f(x)``) saves no copy of ``f(x)`` either, so a BEiT step needs about the
memory of a plain ViT step (``benchmarks/beit_memory.py``). With attention dropout the bias is
materialised per block, as SDPA needs it.

**EVA** (``timm.models.eva.Eva``) already calls ``self.patch_drop(x) -> (x, keep_indices)`` and
gathers its rotary embedding at ``keep_indices`` (timm's ``apply_keep_indices_nlc``); an absolute
position embedding is added before sampling. Putting a :class:`~vitpss.patching.PatchSampler`
with ``return_indices=True`` in that slot is all it takes. As for ViT,
``forward_intermediates(output_fmt="NCHW")`` raises :class:`ValueError` at a keep rate below 1;
BEiT's ``forward_intermediates`` runs all patches whatever the rate (timm gives it no slot).

Both installers add no parameters or buffers: ``state_dict`` keys stay those of the timm model.
At a keep rate of 1 the stock code runs, so outputs are bit-identical to the unmodified model.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .core import Patched, guard_grid_intermediates, patch_class, register_family
from .vit import install_timm_sampler, timm_patch_sampler


class KeptPairs(NamedTuple):
    """What every BEiT block needs to attend among the kept tokens at their true positions.

    ``index``: ``(B, n, n)`` rows of a relative position bias table for each kept (query, key)
    pair, class token included. ``shared_table``: the model's shared ``(num_relative_distance, H)``
    bias table, or ``None`` when the model has none.
    """

    index: torch.Tensor
    shared_table: Optional[torch.Tensor]


def kept_pair_index(relative_position_index: torch.Tensor, keep_indices: torch.Tensor,
                    num_prefix_tokens: int = 1) -> torch.Tensor:
    """``relative_position_index`` (``(N + 1, N + 1)``, class token first) at the kept pairs.

    ``keep_indices``: ``(B, num_keep)`` patch indices. Returns ``(B, n, n)`` with
    ``n = 1 + num_keep``; the class token takes row/column 0. BEiT's index has exactly one prefix
    token, so ``num_prefix_tokens`` must be 1 (ValueError otherwise).
    """
    if num_prefix_tokens != 1:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens}: a BEiT relative position index has exactly one "
                         f"prefix (class) token")
    prefix = keep_indices.new_zeros(keep_indices.shape[0], num_prefix_tokens)
    positions = torch.cat((prefix, keep_indices + 1), dim=1)  # (B, n) rows of the full index
    return relative_position_index[positions[:, :, None], positions[:, None, :]]


def gather_rel_pos_bias(table: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """Bias ``(B, H, n, n)`` from a ``(num_relative_distance, H)`` table at ``pair_index`` ``(B, n, n)``.

    The result's last two dimensions are contiguous, as fused attention kernels prefer.
    (``torch.gather`` along the table's rows is ~10x faster on CPU than advanced indexing.)
    """
    B, n, m = pair_index.shape
    H, R = table.shape[1], table.shape[0]
    rows = table.t().contiguous().unsqueeze(1).expand(H, B, R)
    return rows.gather(2, pair_index.reshape(1, B, n * m).expand(H, B, n * m)).view(H, B, n, m).transpose(0, 1)


#: Upper bound on the elements of one ``(b, H, n, n)`` block of logits that
#: :func:`rel_pos_attention` holds at a time on CPU (16 MiB in float32); on GPUs, where each
#: chunk costs kernel launches, GPU_CHUNK_ELEMENTS (256 MiB).
CHUNK_ELEMENTS = 1 << 22
GPU_CHUNK_ELEMENTS = 1 << 26


def _batch_chunks(q: torch.Tensor, k: torch.Tensor) -> list[slice]:
    """Slices of the batch whose ``(b, H, n, n)`` logits stay within the chunk bound (>= 1 sample)."""
    batch, per_sample = q.shape[0], q.shape[1] * q.shape[2] * k.shape[2]
    limit = CHUNK_ELEMENTS if q.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    size = max(1, min(batch, limit // max(per_sample, 1)))
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


class _RelPosAttention(torch.autograd.Function):
    """Attention with a bias looked up per pair; saves q, k, v and the output, never the bias.

    Forward: the fused ``scaled_dot_product_attention`` kernel, fed the bias of a few samples at a
    time. Backward: the logits of a few samples at a time are recomputed, as flash attention does,
    and the bias gradient is scattered straight into the table.
    """

    @staticmethod
    def forward(ctx, q, k, v, table, pair_index, scale):  # type: ignore[override]
        # (B, n, H, d) in memory, as SDPA lays its output out: the caller's
        # ``transpose(1, 2).reshape(B, n, H * d)`` is then a view, not a copy kept for backward
        out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1]).transpose(1, 2)
        for c in _batch_chunks(q, k):
            bias = gather_rel_pos_bias(table, pair_index[c]).to(q.dtype)
            out[c] = F.scaled_dot_product_attention(q[c], k[c], v[c], attn_mask=bias, scale=scale)
        ctx.save_for_backward(q, k, v, out, table, pair_index)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, table, pair_index = ctx.saved_tensors
        scale, dtype, num_heads = ctx.scale, q.dtype, table.shape[1]
        grad_table = torch.zeros(table.shape[::-1], dtype=torch.float32, device=table.device)  # (H, R)
        # delta_i = sum_j p_ij dp_ij = <dO_i, O_i>: the softmax backward without a (n, n) product
        delta = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for c in _batch_chunks(q, k):
            qc, kc, vc, go = q[c], k[c], v[c], grad_out[c]
            # the logits and dP in float32, as the forward's fused kernel accumulates them: under AMP a
            # bf16/fp16 product would round them before the softmax (inputs upcast exactly)
            logits = torch.matmul(qc.float(), kc.float().transpose(-2, -1)).mul_(scale)
            logits += gather_rel_pos_bias(table, pair_index[c])
            probs = logits.softmax(dim=-1)
            del logits
            grad_logits = torch.matmul(go.float(), vc.float().transpose(-2, -1)).sub_(delta[c]).mul_(probs)
            grad_v = torch.matmul(probs.to(dtype).transpose(-2, -1), go)
            del probs
            if ctx.needs_input_grad[3]:
                index = pair_index[c].reshape(1, -1).expand(num_heads, -1)
                grad_table.scatter_add_(1, index, grad_logits.transpose(0, 1).reshape(num_heads, -1))
            grad_logits = grad_logits.to(dtype)
            grads.append((torch.matmul(grad_logits, kc).mul_(scale),
                          torch.matmul(grad_logits.transpose(-2, -1), qc).mul_(scale), grad_v))
        grad_q, grad_k, grad_v = (torch.cat(g) if len(g) > 1 else g[0] for g in zip(*grads))
        grad_table = grad_table.t().to(table.dtype) if ctx.needs_input_grad[3] else None
        return grad_q, grad_k, grad_v, grad_table, None, None


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                      pair_index: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """``softmax(q k^T * scale + table[pair_index]) v`` without keeping a ``(B, H, n, n)`` tensor.

    ``q, k, v``: ``(B, H, n, d)``; ``table``: ``(num_relative_distance, H)``; ``pair_index``:
    ``(B, n, n)`` rows of ``table`` (:func:`kept_pair_index`). Differentiable in ``q, k, v`` and
    ``table``. The largest temporary is a ``(b, H, n, n)`` block of at most
    :data:`CHUNK_ELEMENTS` elements on CPU, :data:`GPU_CHUNK_ELEMENTS` elsewhere (at least one
    sample).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _RelPosAttention.apply(q, k, v, table, pair_index, scale)


class SampledBeitAttention(Patched):
    def forward(self, x: torch.Tensor, shared_rel_pos_bias: Optional[torch.Tensor | KeptPairs] = None,
                layer_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``timm.models.beit.Attention.forward`` that also accepts :class:`KeptPairs`.

        With a tensor or ``None`` the stock forward runs unchanged. ``layer_scale`` (the block's
        ``gamma_1``) is applied by the output projection (:func:`_scaled_linear`), which then keeps
        no copy of its output for backward.
        """
        if not isinstance(shared_rel_pos_bias, KeptPairs):
            return super().forward(x, shared_rel_pos_bias)  # type: ignore[misc]
        table = shared_rel_pos_bias.shared_table
        if self.relative_position_bias_table is not None:
            own = self.relative_position_bias_table
            table = own if table is None else table + own

        B, N, C = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        elif self.qkv_bias_separate:
            qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        else:
            qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if table is None:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        elif dropout_p > 0:  # attention dropout needs the probabilities: the bias is materialised
            bias = gather_rel_pos_bias(table, shared_rel_pos_bias.index).to(q.dtype)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        else:
            x = rel_pos_attention(q, k, v, table, shared_rel_pos_bias.index, self.scale)
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(_scaled_linear(self.proj, x, layer_scale))


class _LayerScaledLinear(torch.autograd.Function):
    """``gamma * linear(x)`` that saves ``x`` (which the linear layer needs anyway), not its output.

    The gradient of ``gamma`` is ``sum_rows(g * (x W^T + b))``; with ``A = g^T x`` (the weight
    gradient's product, computed anyway) it is ``rowsum(A * W) + b * colsum(g)``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gamma):  # type: ignore[override]
        ctx.save_for_backward(x, weight, bias, gamma)
        y = F.linear(x, weight, bias)  # under autocast in the autocast dtype, as the stock layer
        return y.mul_(gamma) if y.dtype == torch.promote_types(y.dtype, gamma.dtype) else y * gamma

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, bias, gamma = ctx.saved_tensors
        dtype = x.dtype  # the matmuls run in the dtype the forward's linear ran in
        g = grad_out.reshape(-1, grad_out.shape[-1])
        products = torch.matmul(g.to(dtype).t(), x.reshape(-1, x.shape[-1])).float()  # (out, in)
        column_sums = g.float().sum(0)
        grad_gamma = (products * weight.float()).sum(1)
        if bias is not None:
            grad_gamma += bias.float() * column_sums
        grad_x = torch.matmul((g * gamma).to(dtype), weight.to(dtype)).reshape(x.shape)
        grad_weight = (products * gamma.float()[:, None]).to(weight.dtype)
        grad_bias = None if bias is None else (column_sums * gamma.float()).to(bias.dtype)
        return grad_x, grad_weight, grad_bias, grad_gamma.to(gamma.dtype)


def _scaled_linear(linear: nn.Linear, x: torch.Tensor, layer_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``layer_scale * linear(x)``, keeping only ``x`` for backward."""
    if layer_scale is None:
        return linear(x)
    return _LayerScaledLinear.apply(x, linear.weight, linear.bias, layer_scale)


class SampledBeitBlock(Patched):
    def forward(self, x: torch.Tensor, shared_rel_pos_bias: Optional[torch.Tensor | KeptPairs] = None) -> torch.Tensor:
        """``timm.models.beit.Block.forward`` with LayerScale folded into the attention and MLP outputs.

        ``gamma * f(x)`` would save ``f(x)`` for the gradient of ``gamma``; :class:`_LayerScaledLinear`
        saves only the input of ``f``'s last linear layer, which it keeps anyway. Stock forward unless
        given KeptPairs.
        """
        if not isinstance(shared_rel_pos_bias, KeptPairs) or self.gamma_1 is None:
            return super().forward(x, shared_rel_pos_bias=shared_rel_pos_bias)  # type: ignore[misc]
        x = x + self.drop_path1(self.attn(self.norm1(x), shared_rel_pos_bias=shared_rel_pos_bias,
                                          layer_scale=self.gamma_1))
        return x + self.drop_path2(_mlp_forward(self.mlp, self.norm2(x), self.gamma_2))


def _mlp_forward(mlp: nn.Module, x: torch.Tensor, layer_scale: torch.Tensor) -> torch.Tensor:
    """``layer_scale * mlp(x)``, applied by ``fc2`` for timm's plain ``Mlp``."""
    from timm.layers import Mlp

    if type(mlp) is not Mlp:
        return layer_scale * mlp(x)
    x = mlp.norm(mlp.drop1(mlp.act(mlp.fc1(x))))
    return mlp.drop2(_scaled_linear(mlp.fc2, x, layer_scale))


def _beit_relative_position_index(model: nn.Module) -> Optional[torch.Tensor]:
    if model.rel_pos_bias is not None:
        return model.rel_pos_bias.relative_position_index
    for block in model.blocks:
        if block.attn.relative_position_bias_table is not None:
            return block.attn.relative_position_index
    return None


class SampledBeit(Patched):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``Beit.forward_features`` with the patch sampler after the position embedding.

        At an active keep rate of 1 the stock method of the installed timm runs.
        """
        if self.patch_drop.active_keep_rate >= 1.0:
            self.patch_drop.keep_indices = None
            return super().forward_features(x)  # type: ignore[misc]
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        x, keep_indices = self.patch_drop(x)

        relative_position_index = _beit_relative_position_index(self)
        if keep_indices is None or relative_position_index is None:
            rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        else:
            index = kept_pair_index(relative_position_index, keep_indices, self.num_prefix_tokens)
            shared = self.rel_pos_bias.relative_position_bias_table if self.rel_pos_bias is not None else None
            rel_pos_bias = KeptPairs(index, shared)

        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models._manipulate import checkpoint

                x = checkpoint(block, x, shared_rel_pos_bias=rel_pos_bias)
            else:
                x = block(x, shared_rel_pos_bias=rel_pos_bias)
        return self.norm(x)


def _is_beit(model: nn.Module) -> bool:
    from timm.models.beit import Beit

    return isinstance(model, Beit)


def _install_beit(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # timm's Beit.forward_intermediates has no patch_drop slot: it runs all patches at any rate
    install_timm_sampler(model, timm_patch_sampler(model, sampler, generator, return_indices=True))
    patch_class(model, SampledBeit)
    for block in model.blocks:
        patch_class(block, SampledBeitBlock)
        patch_class(block.attn, SampledBeitAttention)


def _is_eva(model: nn.Module) -> bool:
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def _install_eva(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # Eva._pos_embed calls ``x, keep = self.patch_drop(x)`` and gathers RoPE at ``keep`` itself.
    install_timm_sampler(model, timm_patch_sampler(model, sampler, generator, return_indices=True))
    guard_grid_intermediates(model)


register_family("timm Beit (BEiT, BEiT v2, SimMIM ViT; per-block and shared relative position bias)",
                _is_beit, _install_beit)
register_family("timm Eva (EVA, EVA-02, RoPE ViTs; absolute position embedding and/or RoPE)",
                _is_eva, _install_eva)
