"""Malformed command lines and config files: exit status 2, one line on stderr naming the problem, no traceback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vitpss.cli import main

FAST = ["--data", "synthetic", "--synthetic-size", "16", "--in-chans", "1", "--img-size", "16", "--patch-size", "4",
        "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--batch-size", "8", "--epochs", "1",
        "--workers", "0", "--quiet"]


def yaml_file(text: str):
    def make(tmp: Path) -> str:
        path = tmp / "run.yaml"
        path.write_text(text)
        return str(path)
    return make


def folder(*subdirs: str):
    def make(tmp: Path) -> str:
        for sub in subdirs:
            (tmp / "data" / sub).mkdir(parents=True)
        (tmp / "data").mkdir(exist_ok=True)
        return str(tmp / "data")
    return make


def existing_run(tmp: Path) -> str:
    (tmp / "old").mkdir()
    (tmp / "old" / "train_log.jsonl").write_text('{"step": 0}\n')
    return str(tmp / "old")


def a_file(text: str = "not a checkpoint"):
    def make(tmp: Path) -> str:
        (tmp / "file.pt").write_text(text)
        return str(tmp / "file.pt")
    return make


def only_one_class(tmp: Path) -> str:
    for split in ("train", "val"):
        (tmp / "data" / split / "cat").mkdir(parents=True)
        shutil.copy(Path(__file__), tmp / "data" / split / "cat" / "x.png")
    return str(tmp / "data")


#: (id, argv (callables get a fresh tmp dir), text the error line must contain).
CASES = [
    ("no-command", [], "required: COMMAND"),
    ("unknown-command", ["trian"], "invalid choice: 'trian'"),
    ("flag-before-command", ["--bogus"], "required: COMMAND"),
    ("unknown-train-flag", ["train", "--epochz", "3"], "unrecognized arguments: --epochz"),
    ("epochs-not-a-number", ["train", "--epochs", "ten"], "invalid int value: 'ten'"),
    ("epochs-zero", ["train", "--epochs", "0"], "--epochs=0 is out of range"),
    ("epochs-negative", ["train", "--epochs", "-3"], "--epochs=-3 is out of range"),
    ("lr-not-a-number", ["train", "--lr", "fast"], "invalid float value: 'fast'"),
    ("lr-zero", ["train", "--lr", "0"], "--lr=0.0 is out of range"),
    ("lr-nan", ["train", "--lr", "nan"], "--lr=nan is out of range"),
    ("lr-inf", ["train", "--lr", "inf"], "--lr=inf is out of range"),
    ("min-lr-above-lr", ["train", "--lr", "0.001", "--min-lr", "0.1"], "--min-lr=0.1 exceeds --lr=0.001"),
    ("batch-size-zero", ["train", "--batch-size", "0"], "--batch-size=0 is out of range"),
    ("threads-zero", ["train", "--threads", "0"], "--threads=0 is out of range"),
    ("workers-negative", ["train", "--workers", "-1"], "--workers=-1 is out of range"),
    ("drop-path-one", ["train", "--drop-path", "1"], "--drop-path=1.0 is out of range"),
    ("warmup-past-end", ["train", "--epochs", "3", "--warmup-epochs", "9"], "--warmup-epochs=9.0 exceeds --epochs=3"),
    ("schedule-typo", ["train", "--schedule", "cyclc"], "did you mean 'cyclic'"),
    ("sampler-typo", ["train", "--sampler", "magnitud"], "did you mean 'magnitude'"),
    ("amp-unknown", ["train", "--amp", "fp8"], "unknown amp 'fp8'"),
    ("augment-unknown", ["train", "--augment", "heavy"], "unknown augment 'heavy'"),
    ("on-bad-image-unknown", ["train", "--on-bad-image", "ignore"], "unknown on_bad_image 'ignore'"),
    ("low-above-high", ["train", "--schedule", "linear", "--low", "0.9", "--high", "0.5"], "invalid schedule setting"),
    ("quantum-negative", ["train", "--quantum", "-0.2"], "invalid schedule setting"),
    ("cooldown-too-long", ["train", "--epochs", "3", "--cooldown-epochs", "9"], "cooldown_epochs=9"),
    ("mixup-odd-batch", ["train", "--mixup", "0.8", "--batch-size", "7"], "must be even"),
    ("patch-does-not-divide", ["train", "--img-size", "30", "--patch-size", "7"], "not divisible by --patch-size=7"),
    ("device-unknown", ["train", "--device", "tpu"], "is not a device"),
    ("model-typo", ["train", "--model", "deit_tiny_patch16_22", *FAST[:2]], "did you mean 'deit_tiny_patch16_224'"),
    ("model-unsupported", ["train", "--model", "resnet18"], "is not supported"),
    ("num-classes-one", ["train", "--num-classes", "1"], "--num-classes=1 is out of range"),
    ("data-missing", ["train", "--data", "/no/such/dir"], "no such directory"),
    ("data-without-val", ["train", "--data", folder("train/cat")], "missing val/"),
    ("data-one-class", ["train", "--data", only_one_class, "--img-size", "16", "--patch-size", "4", "--quiet"],
     "a classifier needs at least 2"),
    ("output-is-a-file", ["train", "--output", a_file(), *FAST], "is a file"),
    ("output-holds-a-run", ["train", "--output", existing_run, *FAST], "holds another run"),
    ("config-missing", ["train", "--config", "/no/such.yaml"], "cannot read config file"),
    ("config-not-yaml", ["train", "--config", yaml_file("epochs: [1, 2\n")], "is not valid YAML"),
    ("config-not-a-mapping", ["train", "--config", yaml_file("- epochs\n- 3\n")], "must hold a mapping"),
    ("config-unknown-key", ["train", "--config", yaml_file("batchsize: 16\n")], "did you mean 'batch_size'"),
    ("config-unknown-key-dash", ["train", "--config", yaml_file("warmup-epoch: 1\n")], "did you mean 'warmup_epochs'"),
    ("config-wrong-type", ["train", "--config", yaml_file("epochs: ten\n")], "epochs must be int, got 'ten'"),
    ("config-bool-for-int", ["train", "--config", yaml_file("batch_size: true\n")], "batch_size must be int"),
    ("config-string-for-float", ["train", "--config", yaml_file("lr: fast\n")], "lr must be float"),
    ("config-out-of-range", ["train", "--config", yaml_file("drop_path: 1.5\n")], "--drop-path=1.5 is out of range"),
    ("config-empty-value", ["train", "--config", yaml_file("epochs:\n")], "epochs must not be empty"),
    ("config-python-tag", ["train", "--config", yaml_file("epochs: !!python/object/apply:os.system ['exit 3']\n")],
     "is not valid YAML"),  # yaml.safe_load: tags that would call Python are refused
    ("resume-missing", ["train", "--resume", "/no/such/run"], "no checkpoint at /no/such/run"),
    ("resume-with-config", ["train", "--resume", "/no/such/run", "--config", yaml_file("epochs: 2\n")],
     "--config cannot be combined with --resume"),
    ("eval-without-checkpoint", ["eval"], "--checkpoint"),
    ("eval-missing-checkpoint", ["eval", "--checkpoint", "/no/such.pt"], "no checkpoint at /no/such.pt"),
    ("eval-not-a-checkpoint", ["eval", "--checkpoint", a_file()], "is damaged or of another format"),
    ("eval-keep-rate-above-one", ["eval", "--checkpoint", "x.pt", "--keep-rate", "1.5"], "--keep-rate=1.5 is out of range"),
    ("eval-keep-rate-zero", ["eval", "--checkpoint", "x.pt", "--keep-rate", "0"], "--keep-rate=0.0 is out of range"),
    ("sweep-missing-checkpoint", ["sweep", "--checkpoint", "/no/such.pt"], "/no/such.pt"),
]


def resolve(argv: list, tmp: Path) -> list[str]:
    return [a(tmp) if callable(a) else a for a in argv]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_invocation_exits_2_with_one_line_and_no_traceback(tmp_path, argv, expected, capsys):
    assert main(resolve(argv, tmp_path)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("vitpss: error: "), err
    assert "Traceback" not in err and expected in err


def test_the_console_script_exits_2_with_one_line_for_a_bad_flag_and_a_bad_config(tmp_path):
    vitpss = Path(shutil.which("vitpss") or Path(__import__("sys").executable).with_name("vitpss"))
    config = yaml_file("batchsize: 16\n")(tmp_path)
    result = subprocess.run([str(vitpss), "train", "--config", config], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "did you mean 'batch_size'" in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
