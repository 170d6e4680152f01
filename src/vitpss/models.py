"""timm registrations of the BEiT-style models of the paper's recipes and of the CPU demo.

All are timm ``Beit`` models (relative position bias in every block, mean pooling + LayerNorm);
``vitpss.attach`` samples them with the bias gathered at the kept positions. The SimMIM ViT-B of
the paper is timm's own ``beit_base_patch16_224`` (no absolute position embedding, LayerScale 0.1).

* ``vitpss_pss_deit_small_patch16_{224,384}``: the paper's DeiT-S + PSS model (PSS_SPEC.md §4):
  width 384, depth 12, 6 heads, absolute **and** relative position embedding, no LayerScale.
* ``vitpss_tiny_beit_mnist``: 28 px, patch 7 (16 patches), 1 channel, width 64, depth 4, 4 heads,
  relative position bias, LayerScale 0.1: a SimMIM-style ViT sized for the embedded MNIST subset.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.beit import Beit, _cfg, _create_beit

default_cfgs = generate_default_cfgs({  # read by @register_model below: no pretrained weights
    "vitpss_pss_deit_small_patch16_224": _cfg(),
    "vitpss_pss_deit_small_patch16_384": _cfg(input_size=(3, 384, 384)),
    "vitpss_tiny_beit_mnist": _cfg(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,)),
})


def _create(name: str, defaults: dict, kwargs: dict) -> Beit:
    if kwargs.pop("pretrained", False):
        raise ValueError(f"{name} has no published weights: load yours with --pretrained FILE")
    return _create_beit(name, pretrained=False, **{**defaults, **kwargs})


_PSS_DEIT_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True,
                       use_abs_pos_emb=True, use_rel_pos_bias=True, init_values=None, global_pool="avg")


@register_model
def vitpss_pss_deit_small_patch16_224(**kwargs) -> Beit:
    """The paper's DeiT-S + PSS architecture at 224 px (BEiT-style: APE + per-block RPB, mean pooling)."""
    return _create("vitpss_pss_deit_small_patch16_224", dict(_PSS_DEIT_SMALL, img_size=224), kwargs)


@register_model
def vitpss_pss_deit_small_patch16_384(**kwargs) -> Beit:
    """The paper's DeiT-S + PSS architecture at 384 px."""
    return _create("vitpss_pss_deit_small_patch16_384", dict(_PSS_DEIT_SMALL, img_size=384), kwargs)


@register_model
def vitpss_tiny_beit_mnist(**kwargs) -> Beit:
    """A SimMIM-style ViT for 28 px one-channel digits (patch 7: 16 patches, as vitpss_tiny_mnist)."""
    defaults = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
                    use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="avg")
    return _create("vitpss_tiny_beit_mnist", defaults, kwargs)
