"""Figures of SimMIM pre-training runs (``vitpss plot reconstructions RUN_DIR``): what the model fills in.

Rows: validation images, the masked input (masked blocks faded), and the reconstruction (the
model's pixels in masked blocks, the input elsewhere). Masks come from a fixed seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .data import build_datasets
from .errors import UsageError
from .figures import grey_out, new_figure, save_figure
from .inference import display_images
from .models import model_from_pretrain_checkpoint
from .simmim import SimMIM


@torch.no_grad()
def reconstruct(model: SimMIM, inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask (B, G, G), filled (B, C, H, W))``: masked blocks predicted, visible pixels kept."""
    model.eval()
    mask = model.random_mask(inputs.shape[0], inputs.device, torch.Generator(inputs.device).manual_seed(seed))
    _, reconstruction = model(inputs, mask)
    p = model.patch_size
    pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).bool()
    return mask, torch.where(pixel_mask, reconstruction.to(inputs.dtype), inputs)


def plot_reconstructions(run_dir: Path, output: Path, *, num_images: int = 8, seed: int = 0,
                         device: str = "cpu") -> Path:
    """Draw originals, masked inputs and reconstructions of ``num_images`` validation images."""
    if num_images < 1:
        raise UsageError(f"--images={num_images} must be >= 1")
    model, cfg, mask_cfg = model_from_pretrain_checkpoint(run_dir, device)
    _, val_ds, _, _, _ = build_datasets(dataclasses.replace(cfg, num_classes=None))
    count = min(num_images, len(val_ds))
    inputs = torch.stack([val_ds[i][0] for i in range(count)]).to(device)
    mask, filled = reconstruct(model, inputs, seed)
    originals = display_images(inputs, val_ds)
    rows = [("image", originals),
            (f"masked ({mask_cfg['mask_ratio']:.0%})", grey_out(originals, mask.bool().cpu().numpy(), keep=0.0)),
            ("reconstruction", display_images(filled, val_ds))]
    fig, axes = new_figure(1.3 * count, 1.4 * len(rows), ncols=count, nrows=len(rows))
    for r, (label, images) in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            image = images[c]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"SimMIM reconstructions: {cfg.model}, {Path(run_dir).name}", fontsize=10)
    return save_figure(fig, output)
