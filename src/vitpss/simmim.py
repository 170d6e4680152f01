"""SimMIM masked image modelling around a stock timm ViT/BEiT/EVA encoder (Xie et al., CVPR 2022).

Random square blocks of ``mask_patch_size`` pixels are masked; the encoder sees a learnable
``mask_token`` instead of their patch embeddings; a light decoder (a 1x1 convolution and a pixel
shuffle) predicts the pixels of every patch from the final tokens; the loss is the L1 error on
masked pixels only. The encoder is a plain timm model under ``encoder.``: its weights load into
the same timm model for fine-tuning (see :mod:`vitpss.pretrained`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from .patching.core import Patched, patch_class


def default_mask_patch_size(img_size: int, patch_size: int) -> int:
    """SimMIM's 32-pixel mask blocks where they fit the image and patch grid, else one patch."""
    return 32 if img_size % 32 == 0 and 32 % patch_size == 0 else patch_size


def check_mask_geometry(img_size: int, patch_size: int, mask_patch_size: int) -> None:
    """Raise ``ValueError`` unless patch size | mask-patch size | image size."""
    if mask_patch_size % patch_size or img_size % mask_patch_size:
        raise ValueError(
            f"mask_patch_size={mask_patch_size} must be a multiple of the patch size ({patch_size}) "
            f"and divide the image size ({img_size})")


def random_patch_mask(batch_size: int, img_size: int, patch_size: int, mask_patch_size: int, mask_ratio: float,
                      *, generator: Optional[torch.Generator] = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """SimMIM's mask: ``(B, G, G)`` of 0/1 at patch resolution (``G = img_size // patch_size``).

    The image is cut into ``(img_size / mask_patch_size)**2`` blocks; ``ceil(mask_ratio * blocks)``
    of them, chosen uniformly per image, are masked (1).
    """
    check_mask_geometry(img_size, patch_size, mask_patch_size)
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio={mask_ratio!r} is out of range: it must be in (0, 1)")
    blocks_per_side = img_size // mask_patch_size
    num_blocks = blocks_per_side ** 2
    num_masked = math.ceil(num_blocks * mask_ratio)
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, num_blocks, generator=generator, device=noise_device)
    masked = noise.argsort(dim=1)[:, :num_masked]
    mask = torch.zeros(batch_size, num_blocks, device=noise.device).scatter_(1, masked, 1.0)
    scale = mask_patch_size // patch_size
    mask = mask.view(batch_size, blocks_per_side, blocks_per_side)
    return mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2).to(device)


class MaskTokenPatchEmbed(Patched):
    """A patch embedding that puts the mask token in place of the masked patches' embeddings.

    ``masking``: ``(weight, mask_token)`` for the one forward in progress (set by
    :meth:`SimMIM.encode`, cleared after), ``weight`` ``(B, N, 1)`` of 0/1, or ``None``. The
    mask travels on the module, not in a hook registered per forward, so the forward traces
    without a graph break under ``torch.compile``; on the patch embedding of each replica, so it
    is per replica under ``nn.DataParallel`` too.
    """

    masking: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        tokens = super().forward(x, *args, **kwargs)  # type: ignore[misc]
        if self.masking is None:
            return tokens
        weight, mask_token = self.masking
        w = weight.to(tokens.dtype)
        return tokens * (1 - w) + mask_token.to(tokens.dtype) * w


class SimMIM(nn.Module):
    """``encoder`` (a timm model with ``patch_embed`` and ``forward_features``) + mask token + decoder.

    ``forward(images, mask=None) -> (loss, reconstruction)``; ``mask`` is ``(B, G, G)`` as from
    :func:`random_patch_mask`, drawn with ``mask_ratio``, ``mask_patch_size`` and ``generator``
    when not given; ``reconstruction`` has the images' shape. State dict: ``encoder.*`` (the timm
    model's own keys), ``mask_token``, ``decoder.*``.
    """

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.6, mask_patch_size: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.encoder = encoder
        embed_dim = encoder.embed_dim
        self.img_size = int(encoder.patch_embed.img_size[0])
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size or default_mask_patch_size(self.img_size, self.patch_size)
        check_mask_geometry(self.img_size, self.patch_size, self.mask_patch_size)
        self.generator = generator
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 1))
        patch_class(encoder.patch_embed, MaskTokenPatchEmbed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, self.patch_size ** 2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(self.patch_size),
        )

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final patch tokens ``(B, D, G, G)``, masked patches replaced by the mask token on entry."""
        patch_embed = self.encoder.patch_embed
        patch_embed.masking = (mask.flatten(1).unsqueeze(-1), self.mask_token)
        try:
            tokens = self.encoder.forward_features(images)
        finally:
            patch_embed.masking = None
        tokens = tokens[:, self.num_prefix_tokens:]
        side = mask.shape[-1]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    @property
    def patch_embed(self) -> nn.Module:
        """The encoder's patch embedding (so token counts and timing helpers see the patch grid)."""
        return self.encoder.patch_embed

    def random_mask(self, batch_size: int, device: torch.device,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A mask for ``batch_size`` images, drawn with ``generator`` (default: the model's)."""
        return random_patch_mask(batch_size, self.img_size, self.patch_size, self.mask_patch_size, self.mask_ratio,
                                 generator=generator if generator is not None else self.generator, device=device)

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = self.random_mask(images.shape[0], images.device)
        reconstruction = self.decoder(self.encode(images, mask))
        pixel_mask = mask.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2).unsqueeze(1)
        error = F.l1_loss(reconstruction.float(), images.float(), reduction="none")
        loss = (error * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / self.in_chans
        return loss, reconstruction
