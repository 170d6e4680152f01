"""The training job's configuration: one dataclass, loadable from YAML, overridable from the CLI.

Every ``vitpss train`` option is a field of :class:`TrainConfig` (``--batch-size`` is
``batch_size``). Values are resolved in this order: dataclass default, ``--config FILE.yaml``,
command-line flags. :func:`validate` checks types and ranges once, at the edge, and raises
:class:`~vitpss.errors.UsageError` with a message naming the field and the fix; inner code trusts
the config. Model fields left at ``None`` mean "the model's own default"; the training job fills
them in from the built model, so a run's ``config.yaml`` is fully resolved.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import UsageError
from .schedules import SCHEDULES, KeepRateSchedule, build_schedule

#: The default model: a small ViT registered with timm by :mod:`vitpss.train` (28 px, patch 7,
#: 1 channel, width 64, depth 4, 4 heads, average pooling), sized for the embedded MNIST subset.
DEFAULT_MODEL = "vitpss_tiny_mnist"
#: ``--model auto`` (the default): DEFAULT_MODEL for mnist5k and synthetic data, else a small ViT sized for the
#: data (:func:`vitpss.models.resolve_auto_model`).
AUTO_MODEL = "auto"
AMP_CHOICES = ("off", "auto", "bf16", "fp16")
AUGMENT_CHOICES = ("none", "light", "pad-crop", "randaug")
IN_MEMORY_CHOICES = ("auto", "on", "off")
BAD_IMAGE_CHOICES = ("skip", "error")
DECODE_CHOICES = ("cpu", "gpu")
GLOBAL_POOL_CHOICES = ("token", "avg", "max", "avgmax", "map", "")
DEVICE_HINT = "auto, cpu, cuda or cuda:N"
#: The names of :data:`vitpss.samplers.SAMPLERS` (here without importing torch; a test keeps them equal).
SAMPLER_NAMES = ("random", "magnitude", "gumbel-magnitude")
#: How a keep rate gives fewer tokens (vitpss.resolution): drop patches, or a smaller image.
TOKEN_MODES = ("sample", "resize")
#: Model fields that override the timm model's own default where given.
MODEL_OVERRIDES = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans", "global_pool")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """All settings of one training run (see ``vitpss train --help`` for each field)."""

    # Model (timm.create_model name and overrides; None = the model's default).
    model: str = _opt(AUTO_MODEL, "timm model name (ViT, DeiT, BEiT, EVA, ...), or auto: "
                                  f"{DEFAULT_MODEL} for mnist5k and synthetic data, else a small ViT sized for the data "
                                  "(width 192, depth 6, the images' side and channels, a patch size giving about "
                                  "64 tokens)")
    img_size: int | None = _opt(None, "input image size (pixels)")
    patch_size: int | None = _opt(None, "patch size (pixels)")
    embed_dim: int | None = _opt(None, "token width")
    depth: int | None = _opt(None, "number of transformer blocks")
    num_heads: int | None = _opt(None, "attention heads per block")
    in_chans: int | None = _opt(None, "input channels (images are converted to this)")
    drop_path: float = _opt(0.0, "stochastic depth rate (DeiT: 0.1)")
    global_pool: str | None = _opt(None, "pooling: token, avg, max, avgmax, map or '' (none)")
    pretrained: str | None = _opt(None, "initial weights: vitpss pretrain/train checkpoint or run dir, timm "
                                        ".pth/.safetensors, or a SimMIM checkpoint (see README)")
    # Data.
    data: str = _opt("mnist5k", "mnist5k, cifar10, synthetic, an ImageFolder root with train/ and val/, a folder of "
                                "WebDataset shards (train-*.tar, val-*.tar; or wds/DIR), a Hugging Face dataset saved "
                                "with save_to_disk, or hfds/NAME (docs/cli.md, 'Where your data lives')")
    train_split: str | None = _opt(None, "training split: a Hugging Face split name (default train), or with "
                                         "--data wds/DIR a shard pattern such as 'train-{000000..000099}.tar'")
    val_split: str | None = _opt(None, "validation split: a Hugging Face split name (default: the first of validation, "
                                       "val, test), or with --data wds/DIR a shard pattern")
    image_column: str = _opt("image", "Hugging Face dataset column holding the images")
    label_column: str = _opt("label", "Hugging Face dataset column holding the integer classes")
    data_root: str | None = _opt(None, "where --data cifar10 is (or is downloaded to); default ~/.cache/vitpss/cifar10")
    train_subset: int | None = _opt(None, "keep this many training images per class (a fixed choice, not seeded)")
    val_subset: int | None = _opt(None, "keep this many validation images per class (a fixed choice)")
    in_memory: str = _opt("auto", "decode an ImageFolder once into memory: auto (if one image size and < 4 GiB), "
                                  "on, off; cifar10 always is")
    synthetic_size: int = _opt(1024, "number of synthetic training images")
    num_classes: int | None = _opt(None, "classes of synthetic data (default 10); others: from the data")
    augment: str = _opt("light", "training augmentation of real data: none, light (random-resized crop), "
                                 "pad-crop (CIFAR: 4-px padded random crop), randaug (DeiT)")
    hflip: float | None = _opt(None, "horizontal flip probability (default 0 for mnist5k, else 0.5)")
    workers: int | None = _opt(None, "DataLoader workers per process", shown="0 for in-memory data and for CPU "
                               "training with <= 2 cores per process, else cores - 1, at most 8")
    on_bad_image: str = _opt("skip", "an ImageFolder file that cannot be read: skip (warn, count, use the next image) "
                                     "or error (stop, naming it)")
    decode: str = _opt("cpu", "where JPEGs are decoded: cpu (loader workers) or gpu (the device, with the "
                              "random-resized crop and flip; --augment none or light)")
    # Recipe.
    epochs: int = _opt(15, "training epochs")
    batch_size: int = _opt(32, "images per step and per process")
    lr: float = _opt(2e-3, "peak learning rate (AdamW)")
    min_lr: float = _opt(1e-5, "final learning rate of the cosine decay")
    warmup_epochs: float = _opt(0.5, "linear LR warm-up length in epochs")
    weight_decay: float = _opt(0.05, "AdamW weight decay")
    layer_decay: float | None = _opt(None, "layer-wise LR decay for fine-tuning, e.g. 0.65 (default: off)")
    label_smoothing: float = _opt(0.1, "label smoothing")
    mixup: float = _opt(0.0, "Mixup alpha (0 = off)")
    cutmix: float = _opt(0.0, "CutMix alpha (0 = off)")
    ema_decay: float = _opt(0.0, "model EMA decay, e.g. 0.999 (0 = off)")
    clip_grad: float = _opt(0.0, "gradient norm clipping (0 = off)")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA from compute capability 8.0, else fp16; off on CPU), off, bf16, "
                            "fp16 (--amp alone = auto)", const="auto")
    accum_steps: int = _opt(1, "gradient accumulation: micro-batches of --batch-size per optimiser step (the "
                               "schedule and the LR advance per optimiser step)")
    # Patch sampling schedule.
    # Defaults chosen by benchmarks/recipe_study.py over CIFAR-10 and mnist5k settings (docs/benchmarks.md).
    schedule: str = _opt("cosine", "keep-rate schedule: " + ", ".join(SCHEDULES))
    low: float = _opt(0.2, "lowest keep rate")
    high: float = _opt(1.0, "highest keep rate (may exceed 1: clamped)")
    quantum: float = _opt(0.2, "round keep rates to multiples of this (0 = no rounding)")
    cooldown_epochs: int = _opt(0, "last epochs trained with all patches")
    period_steps: int | None = _opt(None, "cyclic period in steps (default: one epoch)")
    sampler: str = _opt("random", "patch sampler where a keep rate < 1 is used: " + ", ".join(SAMPLER_NAMES))
    tokens: str = _opt("sample", "how a keep rate below 1 gives fewer tokens: sample (drop patches) or resize "
                                 "(a smaller image, every patch of it; timm ViTs)")
    budget: float | None = _opt(None, "train within this fraction of the time of --epochs epochs at all patches: "
                                      "vitpss measures step costs and chooses the epochs (e.g. 1 = same time)")
    budget_epochs: int | None = _opt(None, "set by --budget: the all-patch epochs the budget refers to (--epochs "
                                           "then holds the chosen count)")
    # Run.
    seed: int = _opt(0, "random seed")
    output: str | None = _opt(None, "run directory", shown="runs/train-<date>-<time>")
    resume: str | None = _opt(None, "resume a run from its directory or checkpoint file")
    overwrite: bool = _opt(False, "replace the run files in an output directory holding another run")
    device: str = _opt("auto", "device: " + DEVICE_HINT)
    threads: int | None = _opt(None, "CPU threads of torch per process (1 is fastest for small models on shared "
                                     "cores)", shown="torch's")
    save_every_steps: int = _opt(0, "also write checkpoint.pt every N steps (0 = at epoch ends only)")
    max_steps: int | None = _opt(None, "stop (with a checkpoint) after this global step, as if interrupted")
    compile: bool = _opt(False, "wrap the model with torch.compile")
    quiet: bool = _opt(False, "no progress bar")
    log_every: int = _opt(50, "write train_log.jsonl every N steps (one device-to-host transfer per N steps; "
                              "also at every checkpoint)")


#: Fields a resumed run may change (they do not alter the computation); all others come from the checkpoint.
RESUME_OVERRIDABLE = frozenset({"resume", "device", "threads", "workers", "save_every_steps", "max_steps", "quiet", "output", "data", "data_root",
                                "on_bad_image", "log_every"})


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(scalar type, optional) of a field annotation such as ``int | None``."""
    args = typing.get_args(hint)
    if args:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


def field_types() -> dict[str, tuple[type, bool]]:
    """Per field: its scalar type (int, float, str, bool) and whether ``None`` is allowed."""
    return {name: _base_type(hint) for name, hint in _hints().items()}


def nearest(name: str, valid: typing.Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for the closest valid name, or ''.

    Close spellings first (``epoch`` -> ``epochs``); else the longest valid name that is a whole
    ``_``/``-`` part at either end of ``name`` (``keep_rate_low`` -> ``low``).
    """
    valid = list(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not match:
        norm = name.replace("-", "_")
        match = sorted((v for v in valid if len(v) > 1 and (norm.endswith("_" + v.replace("-", "_"))
                        or norm.startswith(v.replace("-", "_") + "_"))), key=len, reverse=True)[:1]
    return f" (did you mean {match[0]!r}?)" if match else ""


def _coerce(name: str, value: Any, kind: type, optional: bool, source: str) -> Any:
    if value is None:
        if optional:
            return None
        raise UsageError(f"{source}: {name} must not be empty (expected {kind.__name__})")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and name == "amp" and isinstance(value, bool):
        return "auto" if value else "off"
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UsageError(f"{source}: {name} must be {kind.__name__}, got {value!r}")


def from_dict(values: Mapping[str, Any], *, base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """``base`` (default: the defaults) updated with ``values``; unknown keys and wrong types -> UsageError."""
    types = field_types()
    unknown = [f"{key!r}{nearest(str(key).replace('-', '_'), types)}" for key in values
               if str(key).replace("-", "_") not in types]
    if unknown:  # all of them at once: a file with three typos should not take three runs
        raise UsageError(f"{source}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    updates = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        kind, optional = types[name]
        updates[name] = _coerce(name, value, kind, optional, source)
    return dataclasses.replace(base or TrainConfig(), **updates)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The ``setting: value`` mapping of a YAML file, keys with '-' spelled '_'; UsageError if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of setting: value, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML file of ``field: value`` pairs (keys as in TrainConfig; '-' or '_')."""
    return from_dict(read_yaml(path), base=base, source=str(path))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain dict of the config (only str, int, float, bool, None): YAML- and checkpoint-safe."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


_RANGES: dict[str, tuple[Any, str]] = {
    "img_size": (lambda v: v >= 1, ">= 1"),
    "patch_size": (lambda v: v >= 1, ">= 1"),
    "embed_dim": (lambda v: v >= 1, ">= 1"),
    "depth": (lambda v: v >= 1, ">= 1"),
    "num_heads": (lambda v: v >= 1, ">= 1"),
    "in_chans": (lambda v: v in (1, 3), "1 or 3"),
    "drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "synthetic_size": (lambda v: v >= 1, ">= 1"),
    "train_subset": (lambda v: v >= 1, ">= 1"),
    "val_subset": (lambda v: v >= 1, ">= 1"),
    "num_classes": (lambda v: v >= 2, ">= 2"),
    "hflip": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: 0 < v < math.inf, "> 0"),
    "min_lr": (lambda v: 0 <= v < math.inf, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mixup": (lambda v: v >= 0, ">= 0"),
    "cutmix": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
    "clip_grad": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "save_every_steps": (lambda v: v >= 0, ">= 0"),
    "accum_steps": (lambda v: v >= 1, ">= 1"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "max_steps": (lambda v: v >= 1, ">= 1"),
    "budget": (lambda v: 0 < v <= 10, "in (0, 10] (a fraction of the all-patch time)"),
    "budget_epochs": (lambda v: v >= 1, ">= 1"),
}

_CHOICES: dict[str, typing.Sequence[str]] = {
    "amp": AMP_CHOICES,
    "augment": AUGMENT_CHOICES,
    "in_memory": IN_MEMORY_CHOICES,
    "global_pool": GLOBAL_POOL_CHOICES,
    "schedule": SCHEDULES,
    "sampler": SAMPLER_NAMES,
    "on_bad_image": BAD_IMAGE_CHOICES,
    "tokens": TOKEN_MODES,
    "decode": DECODE_CHOICES,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_setting(name: str, value: Any) -> None:
    """UsageError when setting ``name`` is out of its range or not one of its choices (None passes)."""
    if value is None:
        return
    if name in _RANGES and not _RANGES[name][0](value):
        raise UsageError(f"{_flag(name)}={value!r} is out of range: it must be {_RANGES[name][1]}")
    if name in _CHOICES and value not in _CHOICES[name]:
        shown = ", ".join(repr(c) if c == "" else c for c in _CHOICES[name])
        raise UsageError(f"unknown {name} {value!r}{nearest(value, _CHOICES[name])}: choose one of {shown}")
    if name == "device" and not (value == "auto" or value == "cpu" or value.startswith("cuda")):
        raise UsageError(f"--device={value!r} is not a device: use {DEVICE_HINT}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check types, ranges, names and the schedule's numbers; return ``cfg`` or raise UsageError."""
    for name, (kind, optional) in field_types().items():
        _coerce(name, getattr(cfg, name), kind, optional, _flag(name))
    for name in field_names():
        check_setting(name, getattr(cfg, name))
    if cfg.decode == "gpu" and cfg.augment not in ("none", "light"):
        raise UsageError(f"--decode gpu does the random-resized crop and flip on the device, not --augment "
                         f"{cfg.augment}: use --augment light or none, or --decode cpu")
    if cfg.min_lr > cfg.lr:
        raise UsageError(f"--min-lr={cfg.min_lr} exceeds --lr={cfg.lr}: the decay must end below the peak")
    if cfg.warmup_epochs > cfg.epochs:
        raise UsageError(f"--warmup-epochs={cfg.warmup_epochs} exceeds --epochs={cfg.epochs}")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise UsageError(f"--batch-size={cfg.batch_size} must be even with Mixup/CutMix")
    if cfg.img_size is not None and cfg.patch_size is not None and cfg.img_size % cfg.patch_size:
        raise UsageError(f"--img-size={cfg.img_size} is not divisible by --patch-size={cfg.patch_size}: "
                         f"choose sizes where the patch size divides the image size")
    schedule_from_config(cfg, steps_per_epoch=2)
    return cfg


#: The settings ``vitpss train --budget F`` uses when neither the command line nor a config file names
#: the recipe (RECIPE_FIELDS): per budget range (F up to the bound), the method with the smallest
#: worst-case regret over the settings of benchmarks/budget_study.py (docs/benchmarks.md, "Same time,
#: better model"); the study's budgets were 0.5, 0.7 and 1, the bounds lie half-way between them.
BUDGET_RECIPES: tuple[tuple[float, str, dict[str, Any]], ...] = (
    (0.6, "resize", {"schedule": "cosine", "low": 0.2, "tokens": "resize"}),
    (0.85, "pss", {"schedule": "cosine", "low": 0.2, "sampler": "random", "tokens": "sample"}),
    (math.inf, "resize", {"schedule": "cosine", "low": 0.2, "tokens": "resize"}),
)
RECIPE_FIELDS = ("schedule", "low", "high", "quantum", "cooldown_epochs", "period_steps", "sampler", "tokens")


def budget_recipe(fraction: float, epochs: int) -> tuple[str, dict[str, Any]]:
    """``(method name, settings)`` that :data:`BUDGET_RECIPES` gives a budget ``fraction`` (of ``epochs`` epochs)."""
    name, settings = next((n, r) for bound, n, r in BUDGET_RECIPES if fraction <= bound)
    return name, dict(settings)


def schedule_from_config(cfg: TrainConfig, steps_per_epoch: int) -> KeepRateSchedule:
    """The keep-rate schedule of ``cfg`` for ``steps_per_epoch``; UsageError naming a bad setting."""
    try:
        return build_schedule(cfg.schedule, low=cfg.low, high=cfg.high, steps_per_epoch=steps_per_epoch,
                              epochs=cfg.epochs, quantum=cfg.quantum, cooldown_epochs=cfg.cooldown_epochs,
                              period_steps=cfg.period_steps)
    except ValueError as err:
        raise UsageError(f"invalid schedule setting: {err} (see --low, --high, --quantum, "
                         f"--cooldown-epochs, --period-steps)") from None


@dataclass(frozen=True)
class MaskConfig:
    """SimMIM's masking: share of ``mask_patch_size`` blocks replaced by the mask token."""

    mask_ratio: float = 0.6
    mask_patch_size: int | None = None  # None: 32 px where it fits, else one patch

    def validate(self) -> "MaskConfig":
        if not 0 < self.mask_ratio < 1:
            raise UsageError(f"--mask-ratio={self.mask_ratio} is out of range: it must be in (0, 1)")
        if self.mask_patch_size is not None and self.mask_patch_size < 1:
            raise UsageError(f"--mask-patch-size={self.mask_patch_size} must be >= 1")
        return self
