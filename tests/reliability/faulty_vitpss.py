"""Run ``vitpss`` with one fault injected: SIGKILL at a chosen point of a training or pre-training run.

Test-only harness (vitpss never imports it). Usage::

    python faulty_vitpss.py PHASE:T RUN_DIR vitpss-args...

The process kills itself with SIGKILL when ``PHASE`` happens while ``RUN_DIR/train_log.jsonl``
holds ``T`` records (``T`` = global steps done and logged so far), so a kill point names the
same moment of the run whether or not the process was resumed. The vitpss code runs unchanged;
the faults come from global hooks of torch and the standard library:

=========  ============================================================================
forward    the training forward of a step (module forward hook on the model)
optimizer  right after ``optimizer.step()`` of a step: weights updated, nothing logged yet
eval       the first evaluation forward after an epoch
save       inside ``torch.save`` of a checkpoint: half of its bytes written
replace    a checkpoint fully written to its temporary file, before the rename
copy       inside the copy of ``checkpoint.pt`` to ``best.pt``: half of its bytes written
summary    ``summary.json`` written to its temporary file, before the rename
=========  ============================================================================
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

PHASES = ("forward", "optimizer", "eval", "save", "replace", "copy", "summary")


def _logged(run_dir: Path) -> int:
    try:
        return (run_dir / "train_log.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(phase: str, at: int, run_dir: Path) -> None:
    """Arm the fault ``phase`` at ``at`` logged steps (see the module docstring)."""
    if phase not in PHASES:
        raise SystemExit(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")

    def armed(name: str) -> bool:
        return name == phase and _logged(run_dir) == at

    def forward_hook(module, args, output):
        # the model itself (a ViT, or SimMIM around one), not a layer
        if hasattr(module, "patch_embed") and (hasattr(module, "blocks") or hasattr(module, "decoder")):
            if armed("forward" if module.training else "eval"):
                _die()

    torch.nn.modules.module.register_module_forward_hook(forward_hook)
    register_optimizer_step_post_hook(lambda opt, args, kwargs: armed("optimizer") and _die())

    real_save, real_replace, real_copy = torch.save, os.replace, shutil.copyfileobj

    def save(obj, f, *args, **kwargs):
        if not armed("save"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        _die()

    def replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        if (name == "checkpoint.pt" and armed("replace")) or (name == "summary.json" and armed("summary")):
            _die()
        return real_replace(src, dst, *args, **kwargs)

    def copyfileobj(src, dst, *args, **kwargs):
        if armed("copy"):
            data = src.read()
            dst.write(data[: len(data) // 2])
            dst.flush()
            _die()
        return real_copy(src, dst, *args, **kwargs)

    torch.save, os.replace, shutil.copyfileobj = save, replace, copyfileobj


def main(argv: list[str]) -> int:
    spec, run_dir, *vitpss_args = argv
    phase, _, at = spec.partition(":")
    install(phase, int(at or 0), Path(run_dir))
    from vitpss.cli import main as vitpss_main

    return vitpss_main(vitpss_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
