"""The loops: one training epoch and one evaluation pass. No files; logging goes through a hook.

Per training step ``t`` (global): ``rate = schedule(t)``; ``vitpss.set_keep_rate(model, rate)``
right before the forward; the record of that step logs the same ``rate``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn

from .patching import set_keep_rate, token_count
from .patching import keep_rate as keep_rate_context
from .timing import sync


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite at global step ``step`` (before its update)."""

    def __init__(self, step: int, loss: float, detail: str = "") -> None:
        super().__init__(f"loss is {loss} at step {step}" + (f" {detail}" if detail else ""))
        self.step, self.loss = step, loss


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes (no-op outside torch.distributed)."""
    if _distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    schedule: Callable[[int], float],
    epoch: int,
    start_step: int,
    device: torch.device,
    loss_fn: nn.Module,
    lr_scheduler: Any = None,
    mixup_fn: Optional[Callable] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    ema: Any = None,
    clip_grad: float = 0.0,
    on_step: Optional[Callable[[dict[str, Any]], bool]] = None,
) -> dict[str, Any]:
    """Train over ``loader`` from global step ``start_step``; returns ``{steps, images, loss, time, stopped, step}``.

    ``model`` may be wrapped (DDP, torch.compile). ``lr_scheduler`` is a timm scheduler stepped per
    update (``step_update``); ``ema`` a timm ``ModelEmaV3``. After every step ``on_step(record)``
    receives ``{step, epoch, keep_rate, tokens, loss, lr, step_time, data_time, images}`` (``loss``
    averaged over processes, ``step_time`` the synchronised compute time, ``images`` over all
    processes) and returns True to stop.
    Raises :class:`NonFiniteLossError` before updating the weights with a NaN/inf loss.
    """
    core = unwrap_model(model)
    world = dist.get_world_size() if _distributed() else 1
    model.train()
    step, images, loss_sum, stopped = start_step, 0, 0.0, False
    start = end = time.perf_counter()
    for x, y in loader:
        data_time = time.perf_counter() - end
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        rate = schedule(step)
        set_keep_rate(core, rate)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        loss_value = all_reduce_sum(loss.detach().float().clone()).item() / world
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(step, loss_value)
        lr = max(group["lr"] for group in optimizer.param_groups)  # the unscaled LR under --layer-decay
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step_update(step + 1)
        if ema is not None:
            ema.update(core, step=step)
        sync(device)
        record = {"step": step, "epoch": epoch, "keep_rate": rate, "tokens": token_count(core, rate),
                  "loss": loss_value, "lr": lr, "step_time": time.perf_counter() - t0, "data_time": data_time,
                  "images": x.shape[0] * world}
        step += 1
        images += record["images"]
        loss_sum += loss_value
        if on_step is not None and on_step(record):
            stopped = True
        end = time.perf_counter()
        if stopped:
            break
    steps = step - start_step
    return {"steps": steps, "images": images, "loss": loss_sum / max(steps, 1),
            "time": time.perf_counter() - start, "stopped": stopped, "step": step}


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
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, images
    context = keep_rate_context(core, keep_rate) if keep_rate is not None else contextlib.nullcontext()
    with context:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = core(x)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            totals += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                   nn.functional.cross_entropy(logits, y, reduction="sum"),
                                   torch.tensor(float(y.numel()), device=device)]).to(totals)
    core.train(was_training)
    correct1, correct5, loss_sum, count = all_reduce_sum(totals).tolist()
    count = max(count, 1.0)
    return {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count,
            "loss": loss_sum / count, "images": int(count)}
