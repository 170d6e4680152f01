"""Fine-tune a tiny timm ViT on the bundled MNIST digits with Lightning and a PSS keep-rate schedule.

    python examples/lightning_mnist.py --epochs 10         # needs: pip install 'vitpss[lightning,mnist]'
"""

import argparse
import time

import lightning.pytorch as L
import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import vitpss
from vitpss.data import load_mnist5k
from vitpss.integrations.lightning import PatchSamplingSchedule


class DigitClassifier(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.model = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10,
                                       embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, global_pool="avg")
        vitpss.attach(self.model, sampler="random")  # the callback sets its keep rate every step

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def test_step(self, batch, batch_idx):  # eval mode: all patches
        x, y = batch
        self.log("accuracy", (self.model(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)
        cosine = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.lr, self.trainer.estimated_stepping_batches,
                                                     pct_start=0.05)  # warm-up, then cosine decay
        return [optimizer], [{"scheduler": cosine, "interval": "step"}]


def digits(batch_size: int) -> tuple[DataLoader, DataLoader]:
    images, labels = load_mnist5k()
    x = (torch.from_numpy(images).float().div(255).unsqueeze(1) - 0.1307) / 0.3081
    y = torch.from_numpy(labels).long()
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))  # the CLI's fixed 4,000/1,000 split
    train, test = TensorDataset(x[order[:4000]], y[order[:4000]]), TensorDataset(x[order[4000:]], y[order[4000:]])
    return DataLoader(train, batch_size, shuffle=True), DataLoader(test, 500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop early (for a quick check)")
    parser.add_argument("--schedule", default="cosine", choices=vitpss.SCHEDULES)
    parser.add_argument("--low", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)

    train, test = digits(args.batch_size)
    module = DigitClassifier(args.lr)
    trainer = L.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[PatchSamplingSchedule(args.schedule, low=args.low)])
    start = time.perf_counter()
    trainer.fit(module, train)
    seconds = time.perf_counter() - start
    accuracy = trainer.test(module, test, verbose=False)[0]["accuracy"]
    print(f"accuracy {accuracy:.4f}  train time {seconds:.1f} s  steps {trainer.global_step}  "
          f"schedule {args.schedule} low={args.low}")


if __name__ == "__main__":
    main()
