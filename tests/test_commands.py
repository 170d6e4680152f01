"""The command line reads the same across commands; `vitpss step-time` works as its --help says."""

from __future__ import annotations

import argparse

import pytest

from vitpss.cli import build_parser, main
from vitpss.config import AMP_CHOICES


def subcommand(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["train", "eval", "sweep", "pretrain"])
def test_amp_takes_the_same_values_everywhere(command):
    amp = option(subcommand(command), "--amp")
    assert tuple(amp.choices or AMP_CHOICES) == AMP_CHOICES and amp.const == "auto"
    if command in ("eval", "sweep"):  # train/pretrain take theirs from TrainConfig, also auto
        assert amp.default == "auto"


@pytest.mark.parametrize("command", [("sweep",), ("step-time",), ("plot", "patches"), ("plot", "patch-frequency")])
def test_lists_of_keep_rates_are_spelled_keep_rates(command):
    action = option(subcommand(*command), "--keep-rates")
    assert action.dest == "keep_rates"
    assert action.type("1,0.5") == [1.0, 0.5]


def test_step_time_help_says_what_it_measures(capsys):
    with pytest.raises(SystemExit):
        main(["step-time", "--help"])
    text = capsys.readouterr().out
    assert "forward, backward, AdamW" in text and "--keep-rates" in text and "example:" in text


def test_step_time_prints_one_row_per_keep_rate(capsys):
    argv = ["step-time", "--model", "vitpss_tiny_mnist", "--batch-size", "2", "--repeats", "1",
            "--keep-rates", "1,0.5", "--threads", "1"]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1.00", "17"), ("0.50", "9")]  # 16 patches + class token
    assert float(rows[0][3]) == 1.0


@pytest.mark.parametrize("argv, message", [
    (["step-time", "--keep-rates", "1,1.5"], "each must be in (0, 1]"),
    (["step-time", "--model", "no_such_vit"], "unknown model 'no_such_vit'"),
    (["step-time", "--repeats", "0"], "--repeats must be >= 1"),
])
def test_step_time_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


# --------------------------------------------------------------------------- one set of shared options

MODEL_COMMANDS = ("train", "eval", "sweep", "plan", "step-time", "pretrain")


def help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    """An option's help with its stated default cut off (each command has its own defaults)."""
    return option(parser, flag).help.split(" (default")[0]


@pytest.mark.parametrize("flag", ["--threads", "--device", "--amp", "--batch-size", "--workers", "--sampler"])
def test_shared_options_exist_with_one_help_text_everywhere(flag):
    commands = [c for c in MODEL_COMMANDS if not (flag == "--workers" and c == "step-time")]  # no data there
    texts = {c: help_of(subcommand(c), flag) for c in commands}
    assert len(set(texts.values())) == 1, texts


@pytest.mark.parametrize("argv, hint", [
    (["train", "--epoch", "3"], "--epoch: did you mean --epochs?"),
    (["eval", "--checkpoint", "x", "--thread", "1"], "--thread: did you mean --threads?"),
    (["step-time", "--batchsize", "2"], "--batchsize: did you mean --batch-size?"),
    (["plot", "schedule", "--schedule", "linear", "--epoc", "2"], "--epoc: did you mean --epoch?"),
])
def test_an_unknown_flag_names_the_subcommands_help_and_the_nearest_flag(capsys, argv, hint):
    assert main(argv) == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2]) if argv[0] == "plot" else argv[0]
    assert err.count("\n") == 1 and hint in err and f"(see 'vitpss {command} --help')" in err, err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["sweep", "--help"],
                                  ["step-time", "--help"]])
def test_help_loads_no_torch(argv):
    # what makes `vitpss --help` answer in well under a second (docs/cli.md gives the measured times)
    import subprocess
    import sys

    code = ("import sys\nfrom vitpss.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules]\nassert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: vitpss" in result.stdout
