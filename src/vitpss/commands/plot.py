"""``vitpss plot <figure>``: the command line of :mod:`vitpss.figures` (one subcommand per figure).

Each figure's command line is a function decorated with :func:`figure`: it adds the figure's
arguments to its parser and returns a callable that draws from the parsed arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..figures import (
    OUTPUT_FORMATS, keep_frequency, patch_panels, plot_curves, plot_patch_frequency, plot_patches, plot_schedule,
    plot_sweep, plot_train_time, run_schedule_curve, schedule_curve,
)
from ..figures_pretrain import plot_reconstructions
from ..schedules import PAPER_SCHEDULES, SCHEDULES
from .common import add_checkpoint_options, add_common_options, parse_rates

Draw = Callable[[argparse.Namespace], None]
_FIGURES: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Draw]]] = {}


def figure(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Draw]], Callable]:
    """Register a figure's command: the decorated function adds its arguments to the parser and
    returns ``draw(args)``, which writes ``args.output``."""
    def decorate(configure: Callable[[argparse.ArgumentParser], Draw]) -> Callable:
        _FIGURES[name] = (help, configure)
        return configure
    return decorate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a figure (schedule, train-time, curves, sweep, patches, ...)",
                                   description="Draw a figure to --output (PNG, or PDF when the name ends in .pdf).")
    figures = parser.add_subparsers(dest="figure", metavar="FIGURE", parser_class=type(parser))
    figures.required = True
    for name, (help_text, configure) in _FIGURES.items():
        sub = figures.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--output", type=Path, default=Path(f"{name}.png"),
                         help="PNG file, or PDF when the name ends in .pdf (default: %(default)s)")
        draw = configure(sub)
        sub.set_defaults(func=lambda args, draw=draw: _draw(draw, args))


def _draw(draw: Draw, args: argparse.Namespace) -> int:
    if args.output.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--output {args.output}: the file name must end in .png or .pdf")
    draw(args)
    print(f"wrote {args.output}")
    return 0


@figure("schedule", "keep rate over training (whole run and one epoch), mean keep rate and compute")
def _schedule_command(p: argparse.ArgumentParser) -> Draw:
    p.add_argument("--schedule", action="append", default=[], metavar="NAME[:key=value,...]",
                   help=f"a schedule ({', '.join(SCHEDULES)}, or paper-<{'|'.join(PAPER_SCHEDULES)}>), "
                        "repeatable to overlay; e.g. fixed:low=0.6 or paper-cyclic:end_drop=0")
    p.add_argument("--run", action="append", default=[], type=Path, metavar="DIR",
                   help="a run directory: plot the keep rates it logged (repeatable)")
    p.add_argument("--low", type=float, default=0.2, help="lowest keep rate (default: %(default)s)")
    p.add_argument("--high", type=float, default=1.0, help="highest keep rate (default: %(default)s)")
    p.add_argument("--quantum", type=float, default=0.2, help="round keep rates to multiples of this (default: "
                   "%(default)s)")
    p.add_argument("--cooldown-epochs", type=int, default=0, help="last epochs with all patches (default: %(default)s)")
    p.add_argument("--start-drop", type=float, default=0.8, help="paper schedules: first drop ratio (default: "
                   "%(default)s)")
    p.add_argument("--end-drop", type=float, default=-0.1, help="paper schedules: last drop ratio (default: "
                   "%(default)s)")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the run (default: %(default)s)")
    p.add_argument("--steps-per-epoch", type=int, default=2502, help="steps per epoch (default: 2502, ImageNet "
                   "at batch 512)")
    p.add_argument("--epoch", type=int, default=1, help="the epoch shown in the right panel, counted from 1 (default: 1)")
    p.add_argument("--model", default=None, help="timm model name: adds each schedule's training compute "
                   "fraction (FLOPs) to the legend (default: none)")

    def draw(args: argparse.Namespace) -> None:
        if not args.schedule and not args.run:
            raise UsageError("give at least one --schedule NAME or --run DIR")
        flop_model = _flop_model(args.model) if args.model and args.schedule else None
        defaults = {k: getattr(args, k) for k in ("low", "high", "quantum", "cooldown_epochs", "start_drop", "end_drop")}
        curves = [schedule_curve(s, defaults=defaults, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                                 flop_model=flop_model) for s in args.schedule]
        curves += [run_schedule_curve(d) for d in args.run]
        plot_schedule(curves, args.output, epoch=args.epoch)
    return draw


def _flop_model(name: str):
    import timm

    from ..flops import FlopModel
    from ..patching import attach

    try:
        model = timm.create_model(name, num_classes=1000)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--model {name!r}: {err}") from None
    return FlopModel(attach(model), backward=True)


@figure("train-time", "per-iteration training step time over one epoch, coloured by keep rate")
def _train_time_command(p: argparse.ArgumentParser) -> Draw:
    p.add_argument("run_dir", nargs="+", type=Path, help="run directories (one panel each)")
    p.add_argument("--epoch", type=int, default=None, help="epoch to show, counted from 1 (default: the second, or the only one)")
    return lambda args: plot_train_time(args.run_dir, args.output, epoch=args.epoch)


@figure("curves", "training loss and validation accuracy of runs, against epochs or wall-clock time")
def _curves_command(p: argparse.ArgumentParser) -> Draw:
    p.add_argument("run_dir", nargs="+", type=Path, help="run directories to compare")
    p.add_argument("--x", choices=("epoch", "time"), default="epoch",
                   help="x axis: epochs, or cumulative training wall-clock time")
    return lambda args: plot_curves(args.run_dir, args.output, x=args.x)


@figure("sweep", "accuracy and throughput vs keep rate from one or more sweep.json files")
def _sweep_command(p: argparse.ArgumentParser) -> Draw:
    p.add_argument("sweep_json", nargs="+", type=Path, help="sweep.json files written by 'vitpss sweep'")
    p.add_argument("--label", action="append", default=None, help="legend label per file (repeat, in order)")

    def draw(args: argparse.Namespace) -> None:
        if args.label is not None and len(args.label) != len(args.sweep_json):
            raise UsageError(f"{len(args.label)} --label for {len(args.sweep_json)} sweep files: give one per file")
        plot_sweep(args.sweep_json, args.output, labels=args.label)
    return draw


def _checkpoint_arguments(p: argparse.ArgumentParser, options: tuple[str, ...] = ("device", "sampler")) -> None:
    add_checkpoint_options(p)
    add_common_options(p, options, defaults={"device": "auto"}, shown={"sampler": "the run's", "batch_size": "the run's"})


@figure("patches", "validation images with dropped patches greyed out, one column per keep rate")
def _patches_command(p: argparse.ArgumentParser) -> Draw:
    _checkpoint_arguments(p)
    p.add_argument("--keep-rates", type=parse_rates, default=[1.0, 0.8, 0.6, 0.4, 0.2],
                   help="comma-separated keep rates, one column each (default 1.0,0.8,0.6,0.4,0.2)")
    p.add_argument("--n-images", type=int, default=4, help="number of validation images (rows)")

    def draw(args: argparse.Namespace) -> None:
        from ..inference import load_checkpoint

        if not 1 <= args.n_images <= 64:
            raise UsageError(f"--n-images {args.n_images}: choose 1 to 64")
        loaded = load_checkpoint(args.checkpoint, data=args.data, device=args.device, sampler=args.sampler)
        inputs, targets, display = loaded.sample_images(args.n_images)
        panels = patch_panels(loaded.model, inputs, display, args.keep_rates)
        plot_patches(panels, targets, args.output, class_names=loaded.class_names,
                     title=f"{args.checkpoint.parent.name}, {loaded.sampler} sampler: grey patches are dropped; "
                           "prediction (softmax probability)")
    return draw


@figure("patch-frequency", "heat map of how often each patch position is kept over the validation set")
def _patch_frequency_command(p: argparse.ArgumentParser) -> Draw:
    _checkpoint_arguments(p, ("device", "sampler", "batch_size"))
    p.add_argument("--keep-rates", "--keep-rate", dest="keep_rates", type=parse_rates, required=True,
                   metavar="R[,R...]", help="comma-separated keep rates; one heat map each")

    def draw(args: argparse.Namespace) -> None:
        from ..inference import load_checkpoint

        loaded = load_checkpoint(args.checkpoint, data=args.data, device=args.device, sampler=args.sampler,
                                 batch_size=args.batch_size)
        frequencies = {r: keep_frequency(loaded.model, loaded.val_loader, r) for r in args.keep_rates}
        plot_patch_frequency(frequencies, args.output, num_images=len(loaded.val_dataset),
                             title=f"{args.checkpoint.parent.name}, {loaded.sampler} sampler: how often each patch "
                                   f"position is kept ({len(loaded.val_dataset)} validation images)")
    return draw



@figure("reconstructions", "SimMIM pre-training run: images, masked inputs and reconstructions")
def _reconstructions_command(p: argparse.ArgumentParser) -> Draw:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a 'vitpss pretrain' run directory or checkpoint")
    p.add_argument("--images", type=int, default=8, help="number of validation images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")

    def draw(args: argparse.Namespace) -> None:
        plot_reconstructions(args.run_dir, args.output, num_images=args.images, seed=args.seed, device=args.device)
    return draw
