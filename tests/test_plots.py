"""Figures render headless from synthetic run directories, sweeps and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from matplotlib.image import imread

import vitpss
from vitpss import figures as plots
from vitpss.checkpoint import read_jsonl
from vitpss.cli import main
from vitpss.errors import UsageError
from vitpss.flops import FlopModel


def tiny_model(in_chans: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                              in_chans=in_chans, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return vitpss.attach(model, sampler="magnitude").eval()


def write_run(run_dir: Path, epochs: int = 2, steps: int = 20) -> Path:
    """A run directory with the contract files, as `vitpss train` writes them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = vitpss.build_schedule("cyclic", steps_per_epoch=steps, epochs=epochs)
    rng = np.random.default_rng(0)
    with open(run_dir / "train_log.jsonl", "w") as f:
        for step in range(epochs * steps):
            rate = schedule(step)
            f.write(json.dumps({"step": step, "epoch": step // steps + 1, "keep_rate": rate, "tokens": 1 + round(rate * 64),
                                "loss": 2.3 * np.exp(-step / 30) + 0.1 * rng.random(), "lr": 1e-3,
                                "step_time": 0.01 + 0.02 * rate + 0.001 * rng.random(), "data_time": 0.001}) + "\n")
    with open(run_dir / "val_log.jsonl", "w") as f:
        for epoch in range(epochs):
            f.write(json.dumps({"epoch": epoch + 1, "step": (epoch + 1) * steps, "acc1": 50.0 + 10 * epoch, "acc5": 90.0, "loss": 1.0,
                                "epoch_time": 1.0}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"compute_fraction": 0.62, "schedule": "cyclic"}))
    return run_dir


def write_sweep(path: Path, scale: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"keep_rate": r, "acc1": 90 * r * scale, "acc5": 99.0, "images_per_s": 100 / r, "gflops": r}
            for r in (1.0, 0.6, 0.2)]
    path.write_text(json.dumps(rows))
    return path


def png_size(path: Path) -> tuple[int, int]:
    height, width = imread(path).shape[:2]
    return width, height


def test_schedule_figure_has_its_pixel_size_and_compute_in_legend(tmp_path):
    flop_model = FlopModel(tiny_model())
    defaults = {"low": 0.2, "high": 1.0, "quantum": 0.2}
    curves = [plots.schedule_curve(s, defaults=defaults, steps_per_epoch=10, epochs=3, flop_model=flop_model)
              for s in ("cyclic", "fixed:low=0.6", "paper-cyclic")]
    assert 0 < curves[0].compute_fraction < 1
    assert curves[1].rates.tolist() == [0.6] * 30
    out = plots.plot_schedule(curves, tmp_path / "schedule.png")
    assert png_size(out) == (1100, 400)


def test_schedule_spec_with_unknown_parameter_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown parameter 'lo'"):
        plots.schedule_curve("cyclic:lo=0.3", defaults={}, steps_per_epoch=4, epochs=1)


def test_run_schedule_curve_uses_the_logged_rates(tmp_path):
    curve = plots.run_schedule_curve(write_run(tmp_path / "run"))
    assert curve.steps_per_epoch == 20 and curve.rates.size == 40 and curve.compute_fraction == 0.62


def test_train_time_figure_renders_one_panel_per_run(tmp_path):
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b")]
    out = plots.plot_train_time(runs, tmp_path / "t.png")
    assert png_size(out) == (1000, 680)


@pytest.mark.parametrize("x", ["epoch", "time"])
def test_curves_figure_renders_against_epoch_and_time(tmp_path, x):
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", epochs=3)]
    out = plots.plot_curves(runs, tmp_path / f"c.png", x=x)
    assert png_size(out) == (1100, 420)


def test_sweep_figure_renders_several_sweeps_and_pdf(tmp_path):
    files = [write_sweep(tmp_path / "base" / "sweep.json"), write_sweep(tmp_path / "pss" / "sweep.json", 1.1)]
    assert png_size(plots.plot_sweep(files, tmp_path / "s.png")) == (800, 480)
    pdf = plots.plot_sweep(files, tmp_path / "s.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_patches_grey_out_dropped_patches_and_leave_kept_ones():
    model = tiny_model()
    inputs = torch.randn(3, 3, 32, 32)
    display = 0.5 * np.random.default_rng(0).random((3, 32, 32, 3))  # never the grey (0.75) itself
    panels = plots.patch_panels(model, inputs, display, [1.0, 0.5])
    assert np.array_equal(panels[0].images, display)  # all kept at rate 1
    with vitpss.keep_rate(model, 0.5):
        model(inputs)
        kept = vitpss.get_keep_indices(model)
    shown = panels[1].images
    for b in range(3):
        kept_set = set(kept[b].tolist())
        assert len(kept_set) == 32
        for patch in range(64):
            row, col = divmod(patch, 8)
            block = np.s_[b, 4 * row:4 * row + 4, 4 * col:4 * col + 4]
            same = np.array_equal(shown[block], display[block])
            assert same == (patch in kept_set)
            if not same:
                assert not np.isclose(shown[block], display[block]).any()


def test_patch_predictions_are_softmax_probabilities_of_eval_mode():
    model = tiny_model()
    inputs = torch.randn(2, 3, 32, 32)
    panel = plots.patch_panels(model, inputs, np.zeros((2, 32, 32)), [0.5])[0]
    with torch.no_grad(), vitpss.keep_rate(model, 0.5):
        probs = model(inputs).softmax(1)
    assert np.allclose(panel.confidence, probs.max(1).values.numpy(), atol=1e-6)
    assert panel.predicted.tolist() == probs.argmax(1).tolist()
    assert model.training is False


def test_patches_figure_size_grows_with_grid(tmp_path):
    panels = plots.patch_panels(tiny_model(1), torch.randn(2, 1, 32, 32), np.zeros((2, 32, 32)), [1.0, 0.6, 0.2])
    out = plots.plot_patches(panels, [1, 2], tmp_path / "p.png", class_names=[str(i) for i in range(10)])
    assert png_size(out) == (540, 420)


def test_keep_frequency_counts_each_image_once_per_kept_position(tmp_path):
    model = tiny_model()
    batches = [(torch.randn(5, 3, 32, 32), torch.zeros(5)), (torch.randn(3, 3, 32, 32), torch.zeros(3))]
    freq = plots.keep_frequency(model, batches, 0.25)
    assert freq.shape == (8, 8)
    assert np.isclose(freq.sum(), 16)  # 16 of 64 patches kept in every image
    assert np.isclose(plots.keep_frequency(model, batches, 1.0), 1).all()
    out = plots.plot_patch_frequency({0.25: freq, 0.5: freq}, tmp_path / "f.png", num_images=8)
    assert png_size(out) == (680, 360)


def test_cli_draws_run_figures(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    sweep = write_sweep(tmp_path / "run" / "sweep.json")
    commands = [["schedule", "--schedule", "cyclic", "--schedule", "fixed:low=0.6", "--run", str(run),
                 "--epochs", "4", "--steps-per-epoch", "20"],
                ["train-time", str(run)], ["curves", str(run), "--x", "time"], ["sweep", str(sweep)]]
    for args in commands:
        out = tmp_path / f"{args[0]}.png"
        assert main(["plot", *args, "--output", str(out)]) == 0
        assert out.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["nonsense"], "invalid choice"),
    (["sweep", "missing.json"], "no such file"),
    (["sweep", "{bad}"], "not valid JSON"),
    (["curves", "{run}"], "val_log.jsonl: no such file"),
    (["schedule"], "at least one --schedule"),
    (["schedule", "--schedule", "zigzag"], "unknown schedule"),
    (["sweep", "{wrong}"], "not a sweep.json"),
    (["sweep", "{good}", "--output", "x.jpg"], "must end in .png or .pdf"),
])
def test_cli_bad_inputs_are_one_line_usage_errors(tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"acc1": 1}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.jsonl").write_text(json.dumps({"step": 0, "epoch": 0, "loss": 1, "step_time": 1}))
    write_sweep(tmp_path / "good.json")
    paths = {"{bad}": "bad.json", "{wrong}": "wrong.json", "{run}": "run", "{good}": "good.json"}
    args = [str(tmp_path / paths[a]) if a in paths else a for a in args]
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_plot_reads_a_log_with_a_torn_last_line_as_resume_does(tmp_path):
    run = write_run(tmp_path / "run")
    complete = read_jsonl(run / "train_log.jsonl")
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"step": 40, "epoch": 2, "keep_ra')  # killed mid-write
    assert read_jsonl(run / "train_log.jsonl") == complete
    assert main(["plot", "curves", str(run), "--output", str(tmp_path / "curves.png")]) == 0


def test_a_damaged_line_before_the_last_is_a_usage_error_naming_it(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    lines = (run / "train_log.jsonl").read_text().splitlines()
    lines[3] = lines[3][:10]
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match="train_log.jsonl, line 4: not valid JSON"):
        read_jsonl(run / "train_log.jsonl")
    assert main(["plot", "curves", str(run), "--output", str(tmp_path / "curves.png")]) == 2
    assert "line 4: not valid JSON" in capsys.readouterr().err
