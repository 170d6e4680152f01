"""Load pre-trained weights into a timm model before fine-tuning (``vitpss train --pretrained FILE``).

Accepted files:

* our own checkpoints: ``vitpss pretrain`` (``{"model": ...}`` with the encoder under
  ``encoder.``, as SimMIM) and ``vitpss train`` (``{"model": timm state dict, ...}``);
* timm checkpoints: a bare state dict, or one under ``model`` / ``state_dict`` / ``module``, in a
  ``torch.save`` file or a ``.safetensors`` file;
* the official SimMIM layout (docs/method.md §5.2): weights under ``model``; when keys start with
  ``encoder.`` only those are kept, prefix stripped (the decoder and ``mask_token`` are
  pre-training only); a shared ``rel_pos_bias`` table is copied to every block of a model with
  per-block tables; ``relative_position_index`` buffers are dropped; bias tables, the absolute
  position embedding and the patch embedding are resized when the grid differs (timm's
  ``checkpoint_filter_fn`` of the model's family, e.g. ``resize_rel_pos_bias_table`` for BEiT).

Keys the model has but the file lacks, or the reverse, raise :class:`~vitpss.errors.UsageError`
listing them, except the expected ones: the classifier (``head``) and the pooled-feature norm
(``fc_norm``) are new when fine-tuning, and a pre-training ``norm`` is unused by a mean-pooling
model (whose ``norm`` is the identity).
"""

from __future__ import annotations

import contextlib
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.models import clean_state_dict
from torch import nn

from .errors import UsageError

# Keys that only a pre-training wrapper has (SimMIM's mask token and pixel decoder).
_PRETRAIN_ONLY = re.compile(r"^(mask_token|decoder\.)")
# Keys a fine-tuning model may legitimately lack in the file: they start fresh.
_EXPECTED_NEW = re.compile(r"^(head|fc_norm)\.")
_SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, for a one-line log."""

    loaded: int
    new: list[str] = field(default_factory=list)        # model keys left at their initialisation
    ignored: list[str] = field(default_factory=list)    # file keys not used by this model
    remapped: list[str] = field(default_factory=list)   # what was converted on the way

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors"]
        if self.new:
            parts.append(f"new: {', '.join(self.new)}")
        if self.ignored:
            parts.append(f"ignored: {', '.join(self.ignored)}")
        if self.remapped:
            parts.append("; ".join(self.remapped))
        return "; ".join(parts)


def data_only_globals() -> list[Any]:
    """Classes that only carry data, allowed when unpickling foreign checkpoints (see :func:`read_checkpoint`)."""
    import argparse

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [argparse.Namespace, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint32,
                                            np.uint8, np.bool_)]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # NumPy 1 and 2 names in old pickles
        allowed += [(core.multiarray._reconstruct, f"{module}._reconstruct"), (core.multiarray.scalar, f"{module}.scalar")]
    return allowed


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """The object stored in ``path`` (``.safetensors`` or a ``torch.save`` file), on the CPU.

    A run directory stands for its ``checkpoint.pt``.
    ``torch.save`` files are read with ``weights_only=True``: tensors, plain values and the
    data-only classes of :func:`data_only_globals` (NumPy arrays and RNG states, ``argparse``
    options, as other projects' checkpoints carry). A file that needs any other class is refused,
    since unpickling it could run code.
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UsageError(f"pretrained file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals(data_only_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = []
        with contextlib.suppress(Exception):  # only zip-format files can be inspected
            allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in data_only_globals()}
            names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
        if names:
            raise UsageError(f"refusing to load pretrained file {path}: it holds Python objects "
                             f"({', '.join(names[:3])}) that unpickling could use to run code; save a plain "
                             f"state dict (torch.save(model.state_dict(), ...)) or a .safetensors file") from None
        raise UsageError(f"cannot read pretrained file {path}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # not a checkpoint at all
        raise UsageError(f"cannot read pretrained file {path}: {type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0]}") from None


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint object, with wrapper prefixes removed.

    Unwraps ``model`` / ``state_dict`` / ``module`` / ``state_dict_ema``-free layouts, strips the
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes and, when present, keeps only
    ``encoder.`` keys without the prefix (and the pre-training-only ``mask_token`` / ``decoder.*``,
    which :func:`convert_state_dict` drops).
    """
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    state = clean_state_dict(state)  # DDP's module. and torch.compile's _orig_mod. prefixes
    if any(k.startswith("encoder.") for k in state):  # a pre-training wrapper: keep the encoder (and
        # the wrapper's own mask token and decoder, so that the report can name them as ignored)
        state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()
                 if k.startswith("encoder.") or _PRETRAIN_ONLY.match(k)}
    return state


def remap_rel_pos_bias(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """SimMIM's ``remap_pretrained_keys_vit`` (in place): share -> per-block table, drop indices.

    Returns notes on what was changed.
    """
    notes = []
    model_keys = model.state_dict().keys()
    per_block = [k for k in model_keys if k.startswith("blocks.") and k.endswith("attn.relative_position_bias_table")]
    if _SHARED_TABLE in state and _SHARED_TABLE not in model_keys and per_block:
        table = state.pop(_SHARED_TABLE)
        for key in per_block:
            state.setdefault(key, table.clone())
        notes.append(f"shared relative position bias copied to {len(per_block)} blocks")
    dropped = [k for k in state if k.endswith("relative_position_index")]
    for key in dropped:
        del state[key]
    return notes


def _family_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``checkpoint_filter_fn`` of the model's module (resizes embeddings and bias tables).

    Only keys the model has go through it; the others are returned unchanged for the report.
    """
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    target = model.state_dict().keys()
    known = {k: v for k, v in state.items() if k in target}
    return {**dict(filter_fn(known, model)), **{k: v for k, v in state.items() if k not in target}}


def _resized(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in after.items() if k in before and tuple(before[k].shape) != tuple(v.shape)]


def convert_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Make a state dict from any supported layout fit ``model``; raise on real mismatches."""
    ignored = sorted(k for k in state if _PRETRAIN_ONLY.match(k))
    state = {k: v for k, v in state.items() if not _PRETRAIN_ONLY.match(k)}
    notes = remap_rel_pos_bias(state, model)
    before = dict(state)
    state = _family_filter(state, model)
    resized = _resized(before, state)
    if resized:
        notes.append(f"resized to this model's grid: {', '.join(resized)}")

    target = model.state_dict()
    wrong_shape = [k for k, v in state.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    # A classifier of another size is replaced by a fresh one.
    for key in [k for k in wrong_shape if _EXPECTED_NEW.match(k)]:
        ignored.append(key)
        del state[key]
    wrong_shape = [k for k in wrong_shape if k in state]

    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    norm_unused = isinstance(getattr(model, "norm", None), nn.Identity)  # mean pooling: fc_norm instead
    unused_norm = [k for k in unexpected if k.startswith("norm.") and norm_unused]
    ignored += unused_norm
    unexpected = [k for k in unexpected if k not in unused_norm]
    new = [k for k in missing if _EXPECTED_NEW.match(k)]
    missing = [k for k in missing if not _EXPECTED_NEW.match(k)]
    problems = []
    if missing:
        problems.append(f"missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected)}")
    if wrong_shape:
        problems.append("shape differs: " + ", ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in wrong_shape))
    if problems:
        raise UsageError(f"pretrained weights do not fit {type(model).__name__} "
                         f"({'; '.join(problems)}); check --model and its size options")
    for key in unexpected:
        del state[key]
    for key in unused_norm:
        state.pop(key, None)
    return state, LoadReport(loaded=len(state), new=new, ignored=sorted(ignored), remapped=notes)


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load the weights in ``path`` into ``model`` (in place); see the module docstring for layouts."""
    state = extract_state_dict(read_checkpoint(path))
    if not state:
        raise UsageError(f"no weights found in {path}: expected a state dict, or one under 'model' or 'state_dict'")
    state, report = convert_state_dict(state, model)
    model.load_state_dict(state, strict=False)
    return report
