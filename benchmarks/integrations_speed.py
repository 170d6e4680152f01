"""Training-step time at keep rate 0.5 vs 1 for every model family ``vitpss.attach`` supports.

    python benchmarks/integrations_speed.py                  # 1 thread, batch 8, 224 px, patch 16
    python benchmarks/integrations_speed.py --repeats 9 --json benchmarks/results/integrations_speed.json

One small model per family, all the same shape (ViT-Ti/16 at half depth: width 192, 6 blocks,
3 heads, 196 patches), randomly initialised: timm ``VisionTransformer``; Hugging Face ViT, DeiT,
Dinov2 (classification heads), CLIP and SigLIP vision towers; open_clip's ``VisionTransformer``
image tower. A step is forward, a loss, backward and AdamW. Rates alternate within each repeat
so drift on a shared machine hits both alike; the table gives the median after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import vitpss

WIDTH, DEPTH, HEADS, IMAGE, PATCH, CLASSES = 192, 6, 3, 224, 16, 10


def hf(model_cls: str, config_cls: str, **extra) -> nn.Module:
    import transformers

    config = getattr(transformers, config_cls)(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH,
                                               num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                               intermediate_size=4 * WIDTH, **extra)
    return getattr(transformers, model_cls)(config)


def timm_vit() -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", depth=DEPTH, num_classes=CLASSES)


def open_clip_tower() -> nn.Module:
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=DEPTH, heads=HEADS,
                             mlp_ratio=4.0, output_dim=CLASSES)


def logits_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)  # timm and open_clip heads give CLASSES logits


def hf_classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x, labels=y).loss


def hf_tower_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).pooler_output.pow(2).mean()  # something to backpropagate


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
FAMILIES: dict[str, tuple[Callable[[], nn.Module], LossFn]] = {
    "timm VisionTransformer": (timm_vit, logits_loss),
    "HF ViTForImageClassification": (lambda: hf("ViTForImageClassification", "ViTConfig", num_labels=CLASSES),
                                     hf_classifier_loss),
    "HF DeiTForImageClassification": (lambda: hf("DeiTForImageClassification", "DeiTConfig", num_labels=CLASSES),
                                      hf_classifier_loss),
    "HF Dinov2ForImageClassification": (lambda: hf("Dinov2ForImageClassification", "Dinov2Config",
                                                   num_labels=CLASSES), hf_classifier_loss),
    "HF CLIPVisionModel": (lambda: hf("CLIPVisionModel", "CLIPVisionConfig"), hf_tower_loss),
    "HF SiglipVisionModel": (lambda: hf("SiglipVisionModel", "SiglipVisionConfig"), hf_tower_loss),
    "open_clip VisionTransformer": (open_clip_tower, logits_loss),
}


def step_times(model: nn.Module, loss_fn: LossFn, rates: list[float], batch: int, repeats: int) -> dict[float, float]:
    """Median seconds of one training step at each rate (rates interleaved, one warm-up round)."""
    x, y = torch.randn(batch, 3, IMAGE, IMAGE), torch.randint(0, CLASSES, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times: dict[float, list[float]] = {r: [] for r in rates}
    model.train()
    for _ in range(1 + repeats):
        for rate in rates:
            vitpss.set_keep_rate(model, rate)
            start = time.perf_counter()
            loss_fn(model, x, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[rate].append(time.perf_counter() - start)
    return {r: statistics.median(t[1:]) for r, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of the table rows")
    parser.add_argument("--json", default="benchmarks/results/integrations_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = {}
    for name in args.families.split(","):
        build, loss_fn = FAMILIES[name]
        torch.manual_seed(0)
        model = vitpss.attach(build())
        times = step_times(model, loss_fn, [1.0, 0.5], args.batch_size, args.repeats)
        rows[name] = {"ms_keep_1": times[1.0] * 1e3, "ms_keep_0.5": times[0.5] * 1e3,
                      "ratio": times[0.5] / times[1.0]}
        print(f"{name:<34}{rows[name]['ms_keep_1']:>9.1f} ms{rows[name]['ms_keep_0.5']:>9.1f} ms"
              f"{rows[name]['ratio']:>8.2f}", flush=True)

    print(f"\n{args.batch_size} images of {IMAGE} px per step, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats}\n| family | step at ρ = 1 | step at ρ = 0.5 | ratio |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['ms_keep_1']:.0f} ms | {row['ms_keep_0.5']:.0f} ms | {row['ratio']:.2f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "args": vars(args),
                               "model": dict(width=WIDTH, depth=DEPTH, heads=HEADS, image=IMAGE, patch=PATCH),
                               "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
