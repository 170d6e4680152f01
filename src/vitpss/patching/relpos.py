"""Patch sampling for timm models whose attention needs token positions: BEiT and EVA.

**BEiT** (``timm.models.beit.Beit``; also SimMIM's ViT) adds a relative position bias to the
attention logits, per block and/or shared by all blocks. After sampling, query ``i`` and key
``j`` are the kept tokens ``p_i`` and ``p_j``, so their bias is ``table[index[p_i, p_j]]``, where
``index`` is the model's ``relative_position_index``. :func:`kept_pair_index` gathers that index
once per forward for the kept pairs only, ``(B, n, n)``; each block then looks its own table up,
``(B, H, n, n)``, and passes it to ``F.scaled_dot_product_attention`` as ``attn_mask``. The full
bias is never repeated per sample.

**EVA** (``timm.models.eva.Eva``) already calls ``self.patch_drop(x) -> (x, keep_indices)`` and
gathers its rotary embedding at ``keep_indices`` (timm's ``apply_keep_indices_nlc``); an absolute
position embedding is added before sampling. Putting a :class:`~vitpss.patching.PatchSampler`
with ``return_indices=True`` in that slot is all it takes.

Both installers add no parameters or buffers: ``state_dict`` keys stay those of the timm model.
At a keep rate of 1 the stock code runs, so outputs are bit-identical to the unmodified model.
"""

from __future__ import annotations

import types
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .core import PatchSampler, register_family


class KeptPairs(NamedTuple):
    """What every BEiT block needs to attend among the kept tokens at their true positions.

    ``index``: ``(B, n, n)`` rows of a relative position bias table for each kept (query, key)
    pair, class token included. ``shared_bias``: ``(B, H, n, n)`` bias from the model's shared
    table, or ``None`` when the model has none.
    """

    index: torch.Tensor
    shared_bias: Optional[torch.Tensor]


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
    """
    return table.t()[:, pair_index].transpose(0, 1)


def _beit_attention_forward(self: nn.Module, x: torch.Tensor,
                            shared_rel_pos_bias: Optional[torch.Tensor | KeptPairs] = None) -> torch.Tensor:
    """``timm.models.beit.Attention.forward`` that also accepts :class:`KeptPairs`.

    With a tensor or ``None`` the stock forward runs unchanged.
    """
    if not isinstance(shared_rel_pos_bias, KeptPairs):
        return type(self).forward(self, x, shared_rel_pos_bias)
    bias = shared_rel_pos_bias.shared_bias
    if self.relative_position_bias_table is not None:
        own = gather_rel_pos_bias(self.relative_position_bias_table, shared_rel_pos_bias.index)
        bias = own if bias is None else bias + own

    B, N, C = x.shape
    if self.q_bias is None:
        qkv = self.qkv(x)
    elif self.qkv_bias_separate:
        qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
    else:
        qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
    q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if bias is not None:
        bias = bias.to(q.dtype)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                       dropout_p=self.attn_drop.p if self.training else 0.0)
    x = x.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _beit_relative_position_index(model: nn.Module) -> Optional[torch.Tensor]:
    if model.rel_pos_bias is not None:
        return model.rel_pos_bias.relative_position_index
    for block in model.blocks:
        if block.attn.relative_position_bias_table is not None:
            return block.attn.relative_position_index
    return None


def _beit_forward_features(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``Beit.forward_features`` with the patch sampler after the position embedding."""
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
        shared = None
        if self.rel_pos_bias is not None:
            shared = gather_rel_pos_bias(self.rel_pos_bias.relative_position_bias_table, index)
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
    model.patch_drop = PatchSampler(sampler, model.num_prefix_tokens, generator, return_indices=True)
    model.forward_features = types.MethodType(_beit_forward_features, model)
    for block in model.blocks:
        block.attn.forward = types.MethodType(_beit_attention_forward, block.attn)


def _is_eva(model: nn.Module) -> bool:
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def _install_eva(model: nn.Module, sampler: str, generator: Optional[torch.Generator]) -> None:
    # Eva._pos_embed calls ``x, keep = self.patch_drop(x)`` and gathers RoPE at ``keep`` itself.
    model.patch_drop = PatchSampler(sampler, model.num_prefix_tokens, generator, return_indices=True)


register_family("timm Beit (BEiT, BEiT v2, SimMIM ViT; per-block and shared relative position bias)",
                _is_beit, _install_beit)
register_family("timm Eva (EVA, EVA-02, RoPE ViTs; absolute position embedding and/or RoPE)",
                _is_eva, _install_eva)
