"""Pieces of the loops: the evaluation pass, cross-process sums, step timing, the non-finite-loss error.

The training loop itself is :meth:`vitpss.trainer.Trainer.train_epoch`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn

from .patching import keep_rate as keep_rate_context


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite at global step ``step`` (before its update)."""

    def __init__(self, step: int, loss: float, detail: str = "") -> None:
        super().__init__(f"loss is {loss} at step {step}" + (f" {detail}" if detail else ""))
        self.step, self.loss, self.detail = step, loss, detail


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes (no-op outside torch.distributed)."""
    if _distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class StepTimer:
    """Compute time of steps without a per-step ``synchronize``: CUDA events on CUDA, the host clock elsewhere.

    :meth:`mark` returns a time stamp (an event recorded on the current stream on CUDA);
    :meth:`seconds` turns ``(start, end)`` pairs into seconds, waiting once for the last event.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, spans: list[tuple[Any, Any]]) -> list[float]:
        if not self.cuda:
            return [end - start for start, end in spans]
        if spans:
            spans[-1][1].synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in spans]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, keep_rate: Optional[float] = None,
             amp_dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``, in eval mode.

    Uses all patches unless ``keep_rate`` is given. Under torch.distributed each process passes
    its own shard and the counts are summed over processes. Returns ``{acc1, acc5, loss, images}``.
    """
    core = unwrap_model(model)
    was_training = core.training
    core.eval()
    # Sums stay on the device and the image count on the host: no batch waits for a copy either way.
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct1, correct5, loss sum
    images = 0
    context = keep_rate_context(core, keep_rate) if keep_rate is not None else contextlib.nullcontext()
    with context:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = core(x)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            sums += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                 nn.functional.cross_entropy(logits, y, reduction="sum")]).to(sums)
            images += y.shape[0]
    core.train(was_training)
    totals = torch.cat([sums, sums.new_tensor([images])])
    correct1, correct5, loss_sum, count = all_reduce_sum(totals).tolist()
    count = max(count, 1.0)
    return {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count,
            "loss": loss_sum / count, "images": int(count)}
