"""Fine-tune a tiny Hugging Face ViT on the bundled MNIST digits with the HF Trainer and a PSS schedule.

    python examples/hf_trainer_mnist.py --epochs 10        # needs: pip install 'vitpss[hf,mnist]'
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

import vitpss
from vitpss.data import load_mnist5k
from vitpss.integrations.transformers import PatchSamplingCallback


class Digits(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.x = (torch.from_numpy(images).float().div(255).unsqueeze(1) - 0.1307) / 0.3081
        self.y = torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


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

    images, labels = load_mnist5k()
    order = np.random.default_rng(0).permutation(len(labels))  # the CLI's fixed 4,000/1,000 split
    train, val = Digits(images[order[:4000]], labels[order[:4000]]), Digits(images[order[4000:]], labels[order[4000:]])
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    torch.manual_seed(0)
    model = vitpss.attach(ViTForImageClassification(config), sampler="random")

    with tempfile.TemporaryDirectory() as output_dir:
        training = TrainingArguments(output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
                                     per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                     weight_decay=0.05, lr_scheduler_type="cosine",
                                     warmup_steps=round(0.05 * args.epochs * len(train) / args.batch_size),
                                     logging_steps=100, save_strategy="no", report_to=[], use_cpu=True,
                                     disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=training, train_dataset=train,
                          callbacks=[PatchSamplingCallback(args.schedule, low=args.low)])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        logits = trainer.predict(val).predictions  # eval mode: all patches
    accuracy = float((logits.argmax(1) == val.y.numpy()).mean())
    print(f"accuracy {accuracy:.4f}  train time {seconds:.1f} s  steps {trainer.state.global_step}  "
          f"schedule {args.schedule} low={args.low}")


if __name__ == "__main__":
    main()
