"""Every timm model vitpss registers, and building a model from a :class:`~vitpss.config.TrainConfig`.

``import vitpss`` registers them, so ``timm.create_model(name)`` works for each:

* ``vitpss_tiny_mnist``: the default model, a timm ``VisionTransformer`` for 28 px digits (below).

The BEiT-style ones are timm ``Beit`` models (relative position bias in every block, mean pooling + LayerNorm);
``vitpss.attach`` samples them with the bias gathered at the kept positions. The SimMIM ViT-B of
the paper is timm's own ``beit_base_patch16_224`` (no absolute position embedding, LayerScale 0.1).

* ``vitpss_pss_deit_small_patch16_{224,384}``: the paper's DeiT-S + PSS model (docs/method.md §4):
  width 384, depth 12, 6 heads, absolute **and** relative position embedding, no LayerScale.
* ``vitpss_tiny_beit_mnist``: 28 px, patch 7 (16 patches), 1 channel, width 64, depth 4, 4 heads,
  relative position bias, LayerScale 0.1: a SimMIM-style ViT sized for the embedded MNIST subset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.beit import Beit, _cfg, _create_beit
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from .checkpoint import PRETRAIN_FORMAT, checkpoint_path, load_checkpoint, load_model_state
from .config import AUTO_MODEL, DEFAULT_MODEL, MODEL_OVERRIDES, MaskConfig, TrainConfig, from_dict, nearest, validate
from .errors import UsageError
from .patching import attach, supported_families
from .simmim import SimMIM

default_cfgs = generate_default_cfgs({  # read by @register_model below: no pretrained weights
    "vitpss_pss_deit_small_patch16_224": _cfg(),
    "vitpss_pss_deit_small_patch16_384": _cfg(input_size=(3, 384, 384)),
    "vitpss_tiny_beit_mnist": _cfg(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,)),
})


def _create_pss_beit(name: str, defaults: dict, kwargs: dict) -> Beit:
    if kwargs.pop("pretrained", False):
        raise ValueError(f"{name} has no published weights: load yours with --pretrained FILE")
    return _create_beit(name, pretrained=False, **{**defaults, **kwargs})


_PSS_DEIT_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True,
                       use_abs_pos_emb=True, use_rel_pos_bias=True, init_values=None, global_pool="avg")


@register_model
def vitpss_pss_deit_small_patch16_224(**kwargs) -> Beit:
    """The paper's DeiT-S + PSS architecture at 224 px (BEiT-style: APE + per-block RPB, mean pooling)."""
    return _create_pss_beit("vitpss_pss_deit_small_patch16_224", dict(_PSS_DEIT_SMALL, img_size=224), kwargs)


@register_model
def vitpss_pss_deit_small_patch16_384(**kwargs) -> Beit:
    """The paper's DeiT-S + PSS architecture at 384 px."""
    return _create_pss_beit("vitpss_pss_deit_small_patch16_384", dict(_PSS_DEIT_SMALL, img_size=384), kwargs)


@register_model
def vitpss_tiny_beit_mnist(**kwargs) -> Beit:
    """A SimMIM-style ViT for 28 px one-channel digits (patch 7: 16 patches, as vitpss_tiny_mnist)."""
    defaults = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
                    use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="avg")
    return _create_pss_beit("vitpss_tiny_beit_mnist", defaults, kwargs)


# --------------------------------------------------------------------------- vitpss_tiny_mnist and config -> model


class LinearPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` computed as one matrix product over the flattened patches.

    A convolution whose stride equals its kernel is that product. On a CPU, for the default
    model's 28-px images, the convolution's forward and backward took ~0.5 ms of a 6-7 ms step at
    keep rate 0.2 (torch.profiler), mostly fixed cost; the product cut the step's fixed part by
    0.35 ms (4.04 -> 3.69 ms, docs/benchmarks.md). Same parameters
    (``proj``), same state_dict, the same output up to float rounding; any input the product does
    not cover (another image size, padding) goes through timm's convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flatten or self.dynamic_img_pad or tuple(x.shape[-2:]) != tuple(self.img_size or ()):
            return super().forward(x)
        batch, chans, height, width = x.shape
        ph, pw = self.patch_size
        patches = (x.reshape(batch, chans, height // ph, ph, width // pw, pw).permute(0, 2, 4, 1, 3, 5)
                   .reshape(batch, (height // ph) * (width // pw), chans * ph * pw))
        return self.norm(F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias))


@register_model
def vitpss_tiny_mnist(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The default model: ViT for 28x28 grayscale digits (patch 7: 16 patches, width 64, depth 4, 4 heads,
    MLP ratio 2, average pooling over tokens; 0.14 M parameters)."""
    if pretrained:
        raise UsageError(f"{DEFAULT_MODEL} has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
                mlp_ratio=2.0, global_pool="avg", embed_layer=LinearPatchEmbed)
    return VisionTransformer(**{**args, **kwargs})




#: ``--model auto`` on data other than mnist5k/synthetic: timm's ViT-Tiny width (192, 3 heads) at half its
#: depth, average pooling, sized for the images (side and channels of the data, about AUTO_TOKENS patches).
AUTO_BASE = {"model": "vit_tiny_patch16_224", "embed_dim": 192, "depth": 6, "num_heads": 3, "global_pool": "avg"}
AUTO_TOKENS = 64


def auto_patch_size(side: int, tokens: int = AUTO_TOKENS) -> int:
    """The patch size dividing ``side`` whose ``(side / p)**2`` patches come nearest to ``tokens``."""
    return min((p for p in range(1, side + 1) if side % p == 0), key=lambda p: (abs((side // p) ** 2 - tokens), -p))


def resolve_auto_model(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model="auto"`` replaced by a model for its data (other models: ``cfg`` unchanged).

    mnist5k and synthetic data: :data:`DEFAULT_MODEL`. Otherwise :data:`AUTO_BASE` at the data's
    image side (rounded down to a multiple of 8) and channels, with the patch size that gives about
    :data:`AUTO_TOKENS` patches; model fields given in ``cfg`` win.
    """
    if cfg.model != AUTO_MODEL:
        return cfg
    from .data import data_image_shape

    shape = data_image_shape(cfg.data)
    if shape is None or cfg.data == "mnist5k":
        return dataclasses.replace(cfg, model=DEFAULT_MODEL)
    chans, side = shape
    size = cfg.img_size or max(8, side // 8 * 8)
    given = {k: v for k, v in AUTO_BASE.items() if k == "model" or getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **given, img_size=size, in_chans=cfg.in_chans or chans,
                               patch_size=cfg.patch_size or auto_patch_size(size))


def model_report(cfg: TrainConfig) -> list[str]:
    """The first line of a run (model, image size, patch size, tokens) for a resolved ``cfg``, and a
    second line when the data's images differ from the model's input (saying how they are adapted)."""
    patches = (cfg.img_size // cfg.patch_size) ** 2
    lines = [f"model {cfg.model}: {cfg.img_size} px, {cfg.in_chans} channel{'s' if cfg.in_chans > 1 else ''}, "
             f"patch {cfg.patch_size}, {patches} patch tokens, width {cfg.embed_dim}, depth {cfg.depth}"]
    from .data import data_image_shape

    shape = data_image_shape(cfg.data)
    if shape is not None and shape != (cfg.in_chans, cfg.img_size):
        chans, side = shape
        how = []
        if side != cfg.img_size:
            how.append(f"resized to {cfg.img_size} px")
        if chans != cfg.in_chans:
            how.append("converted to greyscale" if cfg.in_chans == 1 else f"converted to {cfg.in_chans} channels")
        lines.append(f"note: the images of --data {cfg.data} are {side} px with {chans} channel"
                     f"{'s' if chans > 1 else ''}; {cfg.model} takes {cfg.img_size} px with {cfg.in_chans}: "
                     f"they are {' and '.join(how)}")
    return lines


def check_model_name(name: str) -> None:
    """UsageError naming the nearest timm ViT/DeiT names unless ``name`` is a timm model."""
    if timm.is_model(name):
        return
    names = sorted(set(timm.list_models("*vit*") + timm.list_models("*deit*") + [DEFAULT_MODEL]))
    raise UsageError(f"unknown model {name!r}{nearest(name, names)}: use a timm ViT/DeiT name such as "
                     f"{DEFAULT_MODEL}, deit_tiny_patch16_224, vit_small_patch16_224 (all {len(names)}: "
                     f"python -c \"import timm; print(timm.list_models('*vit*'))\")")


def resolve_model_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every model field filled in from the model (built on the meta device: no memory).

    Raises UsageError for unknown or unsupported models, impossible overrides, and an image size
    that the patch size does not divide. ``model="auto"`` is resolved first (:func:`resolve_auto_model`).
    """
    cfg = resolve_auto_model(cfg)
    with torch.device("meta"):
        model = build_model(cfg)
    embed = model.patch_embed
    resolved = dataclasses.replace(
        cfg, img_size=int(embed.img_size[0]), patch_size=int(embed.patch_size[0]), embed_dim=int(model.embed_dim),
        depth=len(model.blocks), num_heads=int(model.blocks[0].attn.num_heads),
        in_chans=int(embed.proj.in_channels), global_pool=str(model.global_pool))
    if resolved.img_size % resolved.patch_size:
        raise UsageError(f"image size {resolved.img_size} is not divisible by patch size {resolved.patch_size}: "
                         f"set --img-size to a multiple of {resolved.patch_size} (or change --patch-size)")
    return resolved


def build_model(cfg: TrainConfig, generator: Optional[torch.Generator] = None) -> nn.Module:
    """``timm.create_model(cfg.model, ...)`` with the config's overrides, then ``vitpss.attach(cfg.sampler)``.

    Overrides: img_size, patch_size, embed_dim, depth, num_heads, in_chans, global_pool (None =
    the model's own), ``drop_path_rate=cfg.drop_path``, ``num_classes=cfg.num_classes`` (default 10);
    ``cfg.tokens == "resize"`` adds timm's ``dynamic_img_size=True`` (the model reads smaller images).
    ``generator`` seeds the ``random`` sampler. Bad names/settings raise UsageError.
    ``model="auto"`` is resolved first (:func:`resolve_auto_model`).
    """
    cfg = resolve_auto_model(cfg)
    check_model_name(cfg.model)
    kwargs = {k: getattr(cfg, k) for k in MODEL_OVERRIDES if getattr(cfg, k) is not None}
    resize = cfg.tokens == "resize"
    try:
        model = timm.create_model(cfg.model, num_classes=cfg.num_classes or 10, drop_path_rate=cfg.drop_path,
                                  **kwargs, **({"dynamic_img_size": True} if resize else {}))
    except TypeError as err:
        if resize and "dynamic_img_size" in str(err):
            raise UsageError(f"--tokens resize needs a model that reads smaller images (timm's dynamic_img_size, "
                             f"e.g. ViT/DeiT and EVA); {cfg.model} has none: use --tokens sample") from None
        shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in kwargs.items())
        raise UsageError(f"cannot build {cfg.model} with {shown or 'its defaults'}: {err or type(err).__name__}") from None
    except (ValueError, AssertionError, RuntimeError, KeyError) as err:
        shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in kwargs.items())
        raise UsageError(f"cannot build {cfg.model} with {shown or 'its defaults'}: {err or type(err).__name__}") from None
    try:
        return attach(model, cfg.sampler, generator)
    except TypeError:
        raise UsageError(f"model {cfg.model} ({type(model).__name__}) is not supported: vitpss supports "
                         f"{'; '.join(supported_families())}") from None


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                          ema: bool = False, tokens: Optional[str] = None) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a ``vitpss train`` checkpoint (file or run directory) and load its weights.

    The checkpoint carries its config, so no model flags are needed. ``ema=True`` loads the EMA
    weights. A random sampler draws from a generator seeded with the run's ``seed``, so evaluating
    at a keep rate below 1 gives the same numbers every time. ``tokens`` replaces the run's token
    mode (``"resize"``: the model reads smaller images). Returns ``(model in eval mode on device, config)``.
    """
    path = checkpoint_path(path)
    ckpt = load_checkpoint(path)
    cfg = validate(from_dict(ckpt["config"], source=f"config in {path}"))
    if tokens is not None:
        cfg = dataclasses.replace(cfg, tokens=tokens)
    model = build_model(cfg, torch.Generator(torch.device(device)).manual_seed(cfg.seed))
    state = ckpt["ema"] if ema else ckpt["model"]
    if state is None:
        raise UsageError(f"{path} has no EMA weights (the run used --ema-decay 0): drop --ema")
    load_model_state(model, state, str(path))
    return model.to(device).eval(), cfg



# --------------------------------------------------------------------------- SimMIM pre-training models


def build_simmim(cfg: TrainConfig, mask: MaskConfig, generator: Optional[torch.Generator] = None) -> SimMIM:
    """The model of ``vitpss train`` for ``cfg`` (no head, final norm) inside SimMIM."""
    encoder = build_model(cfg)
    encoder.reset_classifier(0)
    try:
        return SimMIM(encoder, mask.mask_ratio, mask.mask_patch_size, generator)
    except ValueError as err:
        raise UsageError(f"--mask-patch-size: {err}") from None


def model_from_pretrain_checkpoint(path: str | Path,
                                   device: str | torch.device = "cpu") -> tuple[SimMIM, TrainConfig, dict]:
    """Rebuild the SimMIM model of a ``vitpss pretrain`` checkpoint (file or run directory)."""
    path = checkpoint_path(path)
    ckpt = load_checkpoint(path, checkpoint_format=PRETRAIN_FORMAT)
    cfg = validate(from_dict(ckpt["config"], source=f"config in {path}"))
    model = build_simmim(cfg, MaskConfig(**ckpt["mask"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg, ckpt["mask"]
