"""Figures from schedules, run directories, sweeps and checkpoints (``vitpss plot`` draws them).

Each figure is a function ``plot_<name>(..., output)`` that draws on a fresh matplotlib
``Figure`` (Agg canvas, no pyplot state) and writes a PNG, or a PDF when ``output`` ends in
``.pdf``. To add a figure: write ``plot_<name>`` here and one ``@figure("<name>", ...)`` function
in ``commands/plot.py``. SimMIM pre-training figures: :mod:`vitpss.figures_pretrain`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .checkpoint import read_jsonl
from .errors import UsageError
from .patching import get_keep_indices, keep_rate, token_count
from .schedules import PAPER_SCHEDULES, build_schedule, paper_schedule

DPI = 100
OUTPUT_FORMATS = {".png": "png", ".pdf": "pdf"}


# ---------------------------------------------------------------------------------------------
# Files in and out


def save_figure(fig: Figure, output: Path) -> Path:
    """Write ``fig`` to ``output`` (PNG or PDF by suffix) atomically, creating parent folders."""
    output = Path(output)
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"--output {output}: the file name must end in .png or .pdf")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    fig.savefig(tmp, format=fmt, dpi=DPI)
    os.replace(tmp, output)
    return output


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; UsageError naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


def read_log(path: Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Records of a run's JSON-lines log carrying ``keys`` (:func:`vitpss.checkpoint.read_jsonl`:
    a torn last line is ignored, as ``--resume`` does); UsageError when missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file (is {path.parent} a vitpss run directory?)")
    rows = read_jsonl(path, keys)
    if not rows:
        raise UsageError(f"{path}: the log is empty")
    return rows


def read_sweep(path: Path) -> list[dict[str, float]]:
    """Rows of a ``sweep.json``, sorted by keep rate; UsageError when the file is not one."""
    rows = read_json(path)
    keys = ("keep_rate", "acc1", "acc5", "images_per_s", "gflops")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and all(k in r for k in keys)
                                                         for r in rows):
        raise UsageError(f"{path}: not a sweep.json (expected a list of rows with keys {', '.join(keys)})")
    return sorted(rows, key=lambda r: r["keep_rate"])


def _run_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory (expected a run directory written by 'vitpss train')")
    return path


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return read_json(path) if path.is_file() else {}


def _epochs_of(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Training-log rows grouped by epoch, in order."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(int(row["epoch"]), []).append(row)
    return [groups[e] for e in sorted(groups)]


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds > 2 * 3600:
        return 3600.0, "h"
    if seconds > 120:
        return 60.0, "min"
    return 1.0, "s"


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs) -> tuple[Figure, Any]:
    """A ``Figure`` on the Agg canvas (no pyplot state) and its ``nrows x ncols`` axes (always 2-D)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# schedule


@dataclass(frozen=True)
class ScheduleCurve:
    """Keep rate at every training step of a run, as planned by a schedule or logged by a run."""

    label: str
    rates: np.ndarray
    steps_per_epoch: int
    compute_fraction: float | None = None


def _schedule_label(schedule) -> str:
    p = schedule.to_dict()
    cooldown = f", cooldown {p['cooldown_epochs']}" if p.get("cooldown_epochs") else ""
    if "start_drop" in p:
        return f"paper {p['name']} (drop {p['start_drop']:g} → {p['end_drop']:g}{cooldown})"
    if p["name"] == "none":
        return "none (all patches)"
    if p["name"] == "fixed":
        return f"fixed ρ={p['low']:g}{cooldown}"
    return f"{p['name']} ρ {p['low']:g} → {p['high']:g}{cooldown}"


def schedule_curve(spec: str, *, defaults: dict[str, float], steps_per_epoch: int, epochs: int,
                   flop_model=None) -> ScheduleCurve:
    """A curve from ``NAME[:key=value,...]``; NAME is a vitpss schedule or ``paper-<name>``.

    Keys override ``defaults`` (``low``, ``high``, ``quantum``, ``cooldown_epochs``; for paper
    schedules ``start_drop``, ``end_drop``, ``cooldown_epochs``). ``flop_model`` (a
    :class:`vitpss.flops.FlopModel`) adds the compute fraction.
    """
    name, _, rest = spec.partition(":")
    paper = name.startswith("paper-")
    allowed = ("start_drop", "end_drop", "cooldown_epochs") if paper else ("low", "high", "quantum",
                                                                          "cooldown_epochs")
    params = {k: v for k, v in defaults.items() if k in allowed}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in allowed:
            raise UsageError(f"--schedule {spec!r}: unknown parameter {key!r} (allowed: {', '.join(allowed)})")
        try:
            params[key] = float(value)
        except ValueError:
            raise UsageError(f"--schedule {spec!r}: {key}={value!r} is not a number") from None
    if "cooldown_epochs" in params:
        params["cooldown_epochs"] = int(params["cooldown_epochs"])
    try:
        if paper:
            if name[6:] not in PAPER_SCHEDULES:
                raise ValueError(f"unknown paper schedule {name[6:]!r}: choose one of {', '.join(PAPER_SCHEDULES)}")
            schedule = paper_schedule(name[6:], steps_per_epoch=steps_per_epoch, epochs=epochs, **params)
        else:
            schedule = build_schedule(name, steps_per_epoch=steps_per_epoch, epochs=epochs, **params)
    except ValueError as err:
        raise UsageError(f"--schedule {spec!r}: {err}") from None
    rates = schedule.rates()
    fraction = flop_model.compute_fraction(rates) if flop_model is not None else None
    return ScheduleCurve(_schedule_label(schedule), rates, steps_per_epoch, fraction)


def run_schedule_curve(run_dir: Path) -> ScheduleCurve:
    """The keep rates a run actually used, from its ``train_log.jsonl``."""
    run_dir = _run_dir(run_dir)
    rows = sorted(read_log(run_dir / "train_log.jsonl", ("step", "epoch", "keep_rate")), key=lambda r: r["step"])
    epochs = _epochs_of(rows)
    fraction = _summary(run_dir).get("compute_fraction")
    return ScheduleCurve(f"{run_dir.name} (logged)", np.array([r["keep_rate"] for r in rows], dtype=float),
                         len(epochs[0]), fraction)


def plot_schedule(curves: Sequence[ScheduleCurve], output: Path, *, epoch: int = 1) -> Path:
    """Keep rate over the whole run (left) and within epoch ``epoch`` (counted from 1; right), one line per curve.

    The legend gives each curve's mean keep rate and, when known, its compute fraction (training
    FLOPs over the same run with all patches).
    """
    fig, axes = new_figure(11, 4, ncols=2, sharey=True)
    whole, one = axes[0]
    colors = matplotlib.colormaps["tab10"].colors
    for i, c in enumerate(curves):
        label = f"{c.label}: mean ρ {c.rates.mean():.3f}"
        if c.compute_fraction is not None:
            label += f", compute {100 * c.compute_fraction:.0f}%"
        style = dict(color=colors[i % len(colors)], drawstyle="steps-post", lw=1.6, alpha=0.85,
                     ls=("-", "--", ":", "-.")[i % 4])
        whole.plot(np.arange(c.rates.size) / c.steps_per_epoch, c.rates, label=label, **style)
        start = (epoch - 1) * c.steps_per_epoch
        part = c.rates[start:start + c.steps_per_epoch]
        one.plot(np.arange(part.size), part, **style)
    whole.set(title="Keep rate over the run", xlabel="epoch", ylabel="keep rate ρ (share of patches)",
              ylim=(0, 1.05))
    one.set(title=f"Keep rate within epoch {epoch}", xlabel="iteration within the epoch")
    for ax in (whole, one):
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(2, len(curves)), fontsize=9)
    return save_figure(fig, output)


# ---------------------------------------------------------------------------------------------
# train-time


def _rate_colors(rates: Sequence[float]) -> dict[float, Any]:
    levels = sorted(set(float(r) for r in rates))
    cmap = matplotlib.colormaps["viridis"]
    return {r: cmap(i / max(len(levels) - 1, 1) * 0.9) for i, r in enumerate(levels)}


def plot_train_time(run_dirs: Sequence[Path], output: Path, *, epoch: int | None = None) -> Path:
    """Per-iteration ``step_time`` over one epoch of each run, coloured by keep rate.

    Dashed lines mark the mean step time of each keep rate over each stretch at that rate. The
    default epoch is the second (the first carries warm-up costs) or the only one.
    """
    runs = []
    for run_dir in run_dirs:
        run_dir = _run_dir(run_dir)
        epochs = _epochs_of(read_log(run_dir / "train_log.jsonl", ("step", "epoch", "keep_rate", "step_time")))
        index = (1 if len(epochs) > 1 else 0) if epoch is None else epoch - 1  # epochs count from 1
        if not 0 <= index < len(epochs):
            raise UsageError(f"--epoch {epoch}: {run_dir} has epochs 1..{len(epochs)}")
        runs.append((run_dir.name, index, sorted(epochs[index], key=lambda r: r["step"])))
    colors = _rate_colors([r["keep_rate"] for _, _, rows in runs for r in rows])
    fig, axes = new_figure(10, 1.2 + 2.8 * len(runs), nrows=len(runs), sharey=True)
    for ax, (name, index, rows) in zip(axes[:, 0], runs):
        rate = np.array([r["keep_rate"] for r in rows], dtype=float)
        ms = 1e3 * np.array([r["step_time"] for r in rows], dtype=float)
        x = np.arange(ms.size)
        for level in sorted(set(rate), reverse=True):
            at = rate == level
            mean = ms[at].mean()
            ax.scatter(x[at], ms[at], s=6, color=colors[level], alpha=0.6,
                       label=f"ρ={level:g}: mean {mean:.3g} ms ({at.sum()} steps)")
            edges = np.flatnonzero(np.diff(np.r_[0, at.astype(int), 0]))  # starts/ends of stretches
            for start, end in zip(edges[::2], edges[1::2]):
                ax.hlines(mean, start - 0.5, end - 0.5, color=colors[level], ls="--", lw=1.5)
        ax.set(title=f"{name}: training step time, epoch {index + 1}", xlabel="iteration within the epoch",
               ylabel="step time (ms)")
        top = max(np.percentile(ms, 99), ms.mean()) * 1.25
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, markerscale=2, ncols=2)
    return save_figure(fig, output)


# ---------------------------------------------------------------------------------------------
# curves


def _run_curves(run_dir: Path, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train loss, val x, val acc1) of one run; x in epochs or in seconds of training."""
    train = _epochs_of(read_log(run_dir / "train_log.jsonl", ("step", "epoch", "loss", "step_time")))
    val = read_log(run_dir / "val_log.jsonl", ("epoch", "acc1"))
    first_epoch = int(train[0][0]["epoch"])
    loss = np.array([r["loss"] for rows in train for r in rows], dtype=float)
    if x == "epoch":
        tx = np.concatenate([(int(rows[0]["epoch"]) - first_epoch) + (np.arange(len(rows)) + 1) / len(rows)
                             for rows in train])
        vx = np.array([int(v["epoch"]) - first_epoch + 1 for v in val], dtype=float)
    else:  # seconds of training: each step's compute and data wait, summed
        step_s = np.array([r["step_time"] + r.get("data_time", 0.0) for rows in train for r in rows])
        tx = np.cumsum(step_s)
        ends = {int(rows[0]["epoch"]): tx[sum(len(g) for g in train[:i + 1]) - 1] for i, rows in enumerate(train)}
        vx = np.array([ends.get(int(v["epoch"]), np.nan) for v in val])
    return tx, loss, vx, np.array([v["acc1"] for v in val], dtype=float)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, values.size))
    kernel = np.ones(window) / window
    padded = np.r_[np.full(window - 1, values[0]), values]
    return np.convolve(padded, kernel, mode="valid")


def plot_curves(run_dirs: Sequence[Path], output: Path, *, x: str = "epoch") -> Path:
    """Training loss (left) and validation top-1 accuracy (right) of each run.

    ``x="epoch"`` plots against epochs; ``x="time"`` against cumulative training wall-clock time
    (sum of each step's compute and data time, evaluation excluded): time to accuracy.
    """
    if x not in ("epoch", "time"):
        raise UsageError(f"--x {x!r}: choose epoch or time")
    data = [(_run_dir(d).name, *_run_curves(_run_dir(d), x)) for d in run_dirs]
    scale, unit = (1.0, "") if x == "epoch" else _time_unit(max(np.nanmax(tx) for _, tx, *_ in data))
    xlabel = "epoch" if x == "epoch" else f"training time ({unit}, wall-clock, evaluation excluded)"
    fig, axes = new_figure(11, 4.2, ncols=2)
    loss_ax, acc_ax = axes[0]
    colors = matplotlib.colormaps["tab10"].colors
    for i, (name, tx, loss, vx, acc) in enumerate(data):
        color = colors[i % len(colors)]
        loss_ax.plot(tx / scale, loss, color=color, alpha=0.2, lw=0.8)
        loss_ax.plot(tx / scale, _smooth(loss, max(1, loss.size // 50)), color=color, lw=1.8, label=name)
        acc_ax.plot(vx / scale, acc, "o-", color=color, ms=4, label=f"{name}: best {np.nanmax(acc):.2f}%")
    loss_ax.set(title="Training loss (faint: per step; solid: moving mean)", xlabel=xlabel, ylabel="loss (cross-entropy)")
    acc_ax.set(title="Validation accuracy", xlabel=xlabel, ylabel="top-1 accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    return save_figure(fig, output)


# ---------------------------------------------------------------------------------------------
# sweep


def plot_sweep(sweep_files: Sequence[Path], output: Path, *, labels: Sequence[str] | None = None,
               title: str | None = None) -> Path:
    """Top-1 accuracy (solid, left axis) and model-only throughput (dashed, right axis) against
    keep rate, one colour per ``sweep.json`` (e.g. baseline vs PSS)."""
    sweeps = [read_sweep(Path(f)) for f in sweep_files]
    if labels is None:
        labels = [Path(f).parent.name or str(f) for f in sweep_files]
    fig, axes = new_figure(8, 4.8)
    acc_ax = axes[0][0]
    speed_ax = acc_ax.twinx()
    colors = matplotlib.colormaps["tab10"].colors
    for i, (rows, label) in enumerate(zip(sweeps, labels)):
        rate = [r["keep_rate"] for r in rows]
        color = colors[i % len(colors)]
        acc_ax.plot(rate, [r["acc1"] for r in rows], "o-", color=color, lw=2, label=f"{label}: top-1 accuracy")
        speed_ax.plot(rate, [r["images_per_s"] for r in rows], "s--", color=color, mfc="none", alpha=0.8,
                      label=f"{label}: images/s")
    acc_ax.set(xlabel="keep rate ρ at inference (share of patches)", ylabel="top-1 accuracy (%)",
               title=title or "Dynamic inference: accuracy and throughput vs keep rate")
    speed_ax.set_ylabel("throughput (images/s, model only)")
    speed_ax.set_ylim(bottom=0)
    acc_ax.grid(alpha=0.3)
    handles, names = (a + b for a, b in zip(acc_ax.get_legend_handles_labels(), speed_ax.get_legend_handles_labels()))
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=9)
    return save_figure(fig, output)


# ---------------------------------------------------------------------------------------------
# patches and patch-frequency: what a checkpoint keeps


def dropped_patch_mask(model: nn.Module, batch_size: int) -> np.ndarray:
    """``(B, grid_h, grid_w)`` booleans: which patches the model's last forward dropped."""
    grid = tuple(model.patch_embed.grid_size)
    kept = np.ones((batch_size, grid[0] * grid[1]), dtype=bool)
    indices = get_keep_indices(model)
    if indices is not None:
        kept[:] = False
        np.put_along_axis(kept, indices.cpu().numpy(), True, axis=1)
    return ~kept.reshape(batch_size, *grid)


def grey_out(images: np.ndarray, dropped: np.ndarray, *, grey: float = 0.75, keep: float = 0.3) -> np.ndarray:
    """RGB images ``(B, H, W, 3)`` in [0, 1] with dropped patches faded towards ``grey``.

    ``images`` is ``(B, H, W)`` or ``(B, H, W, C)`` in [0, 1]; ``dropped`` is ``(B, gh, gw)`` and
    is stretched over the image, so each patch is ``H / gh`` by ``W / gw`` pixels.
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    rows, cols = images.shape[1] // dropped.shape[1], images.shape[2] // dropped.shape[2]
    mask = dropped.repeat(rows, axis=1).repeat(cols, axis=2)[..., None]
    return np.where(mask, keep * images + (1 - keep) * grey, images)


@dataclass
class PatchPanel:
    """One keep rate applied to a batch: what was shown, predicted, and how sure."""

    rate: float
    tokens: int
    images: np.ndarray  # (B, H, W, 3), dropped patches greyed out
    predicted: np.ndarray  # (B,)
    confidence: np.ndarray  # (B,) softmax probability of the predicted class


@torch.no_grad()
def patch_panels(model: nn.Module, inputs: torch.Tensor, display: np.ndarray, rates: Sequence[float]) -> list[PatchPanel]:
    """Run ``inputs`` (normalised, on the model's device) in eval mode at each rate.

    ``display`` holds the same images for viewing, ``(B, H, W[, C])`` in [0, 1].
    """
    model.eval()
    panels = []
    for rate in rates:
        with keep_rate(model, rate):
            probs = model(inputs).float().softmax(dim=1)
            dropped = dropped_patch_mask(model, inputs.shape[0])
        confidence, predicted = probs.max(dim=1)
        panels.append(PatchPanel(rate, token_count(model, rate), grey_out(display, dropped),
                                 predicted.cpu().numpy(), confidence.cpu().numpy()))
    return panels


def plot_patches(panels: Sequence[PatchPanel], targets: Sequence[int], output: Path, *,
                 class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Grid of images (rows) by keep rate (columns), dropped patches greyed out, with the
    predicted class and its softmax probability above each (green: right, red: wrong)."""
    names = list(class_names) if class_names is not None else None
    name = (lambda c: names[c]) if names else str
    nrows, ncols = len(targets), len(panels)
    fig, axes = new_figure(0.3 + 1.7 * ncols, 0.5 + 1.85 * nrows, ncols=ncols, nrows=nrows)
    for col, panel in enumerate(panels):
        for row, target in enumerate(targets):
            ax = axes[row][col]
            ax.imshow(panel.images[row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            pred = int(panel.predicted[row])
            ax.set_title(f"{name(pred)} ({100 * panel.confidence[row]:.0f}%)", fontsize=9,
                         color="tab:green" if pred == int(target) else "tab:red")
            if col == 0:
                ax.set_ylabel(f"true: {name(int(target))}", fontsize=9)
            if row == nrows - 1:
                ax.set_xlabel(f"ρ = {panel.rate:g}\n({panel.tokens} tokens)", fontsize=9)
    fig.suptitle(title or "Kept patches by keep rate (grey: dropped); prediction (softmax probability)",
                 fontsize=10)
    return save_figure(fig, output)


@torch.no_grad()
def keep_frequency(model: nn.Module, batches, rate: float) -> np.ndarray:
    """Share of images in which each patch position is kept at ``rate``: ``(grid_h, grid_w)``."""
    model.eval()
    device = next(model.parameters()).device
    kept, total = 0, 0
    with keep_rate(model, rate):
        for x, _ in batches:
            model(x.to(device))
            kept = kept + (~dropped_patch_mask(model, x.shape[0])).sum(axis=0)
            total += x.shape[0]
    if total == 0:
        raise UsageError("the validation data is empty: nothing to count")
    return kept / total


def plot_patch_frequency(frequencies: dict[float, np.ndarray], output: Path, *, num_images: int,
                         title: str | None = None) -> Path:
    """Heat map per keep rate: % of the ``num_images`` images in which each position is kept."""
    ncols = len(frequencies)
    fig, axes = new_figure(0.8 + 3.0 * ncols, 3.6, ncols=ncols)
    image = None
    for ax, (rate, freq) in zip(axes[0], frequencies.items()):
        image = ax.imshow(100 * freq, cmap="hot", vmin=0, vmax=100, interpolation="nearest")
        ax.set(title=f"ρ = {rate:g}", xlabel="patch column", ylabel="patch row")
    fig.colorbar(image, ax=axes[0].tolist(), label="kept in % of images", shrink=0.9)
    fig.suptitle(title or f"How often each patch position is kept ({num_images} validation images)", fontsize=10)
    return save_figure(fig, output)
