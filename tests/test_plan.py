"""``vitpss plan``: grid table, compute and time fractions, budget solving, one-line errors."""

import functools
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import vitpss
from vitpss.cli import main
from vitpss.config import from_dict
from vitpss.errors import UsageError
from vitpss.flops import FlopModel
import vitpss.commands.plan
from vitpss.commands.plan import (
    MAX_MEASURED, LoaderSpeed, StepTimes, budget_candidates, calibration_counts, grid_rates, nearest_shares, solve_budget,
    table_rates,
)
from vitpss.schedules import quantize

from train_helpers import make_image_folder

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "4", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2", "--device", "cpu", "--batch-size", "2"]
RUN = ["--epochs", "3", "--steps-per-epoch", "20"]


@functools.lru_cache(maxsize=1)
def tiny_flop_model() -> FlopModel:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                              num_heads=2, num_classes=10)
    return FlopModel(vitpss.attach(model))


def plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *TINY, *RUN, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_reports_mean_keep_rate_and_compute_fraction_of_the_schedule(capsys):
    threads = torch.get_num_threads()
    plan = plan_json(capsys, "--no-measure", "--schedule", "cyclic", "--low", "0.2", "--threads", "1")
    assert plan["threads"] == 1 and torch.get_num_threads() == threads
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=20, epochs=3)
    assert plan["schedule"] == schedule.to_dict()
    assert plan["mean_keep_rate"] == pytest.approx(schedule.mean_keep_rate())
    assert plan["compute_fraction"] == pytest.approx(tiny_flop_model().compute_fraction(schedule.rates()), rel=1e-6)
    assert plan["time_fraction"] is None
    assert plan["distinct_rates"] == len(schedule.levels()) == 5
    assert [row["keep_rate"] for row in plan["levels"]] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert sum(row["share"] for row in plan["levels"]) == pytest.approx(1.0)
    assert [row["share"] for row in plan["levels"]] == pytest.approx(list(schedule.levels().values()))
    assert [row["tokens"] for row in plan["levels"]] == [1 + vitpss.keep_count(r, 64) for r in (0.2, 0.4, 0.6, 0.8, 1.0)]


def test_plan_measures_each_grid_rate_and_predicts_time_and_hours(capsys):
    plan = plan_json(capsys, "--repeats", "1", "--warmup", "0", "--baseline-hours", "10")
    times = {row["keep_rate"]: row["step_time_s"] for row in plan["levels"]}
    assert all(t > 0 for t in times.values())
    shares = {row["keep_rate"]: row["share"] for row in plan["levels"]}
    expected = sum(shares[r] * times[r] for r in times) / times[1.0]
    assert plan["time_fraction"] == pytest.approx(expected)
    assert plan["predicted_hours"] == pytest.approx(10 * plan["time_fraction"])
    assert plan["measured_tokens"] == [row["tokens"] for row in plan["levels"]]


def test_plan_prints_a_table_row_per_grid_rate_and_the_summary(capsys):
    assert main(["plan", *TINY, *RUN, "--no-measure", "--quantum", "0.25", "--baseline-hours", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [float(r[0]) for r in rows] == [0.25, 0.5, 0.75, 1.0]
    for label in ("mean keep rate", "compute fraction", "time fraction", "predicted hours"):
        assert label in out


def test_step_times_interpolate_a_quadratic_in_tokens_between_measured_counts():
    cost = lambda n: 0.01 + 2e-4 * n + 3e-6 * n * n  # noqa: E731
    times = StepTimes(64, {n: cost(n) for n in (13, 26, 38, 51, 64)})
    assert times.at_count(20) == pytest.approx(cost(20))
    rates = np.array([0.1, 0.35, 0.35, 1.0])
    expected = sum(cost(vitpss.keep_count(r, 64)) for r in rates) / (4 * cost(64))
    assert times.time_fraction(rates) == pytest.approx(expected)


def test_calibration_times_every_distinct_count_when_few_and_only_the_rows_when_many():
    rows = table_rates(0.0)
    few = calibration_counts(64, rows, np.array([0.37, 0.37, 1.0]))
    assert vitpss.keep_count(0.37, 64) in few
    many = calibration_counts(64, rows, np.linspace(0.1, 1.0, 50))
    assert many == sorted({vitpss.keep_count(r, 64) for r in rows}) and len(many) <= MAX_MEASURED


@pytest.mark.parametrize("quantum", [0.2, 0.25, 0.3, 0.4, 0.15, 0.1])
def test_grid_holds_every_rate_a_quantised_schedule_produces_and_none_above_one(quantum):
    rates = quantize(np.linspace(0.0, 1.0, 1001), quantum)
    assert rates.max() <= 1.0
    assert set(np.round(rates, 10)) <= set(grid_rates(quantum))


def test_shares_go_to_the_nearest_row_for_unquantised_schedules():
    assert nearest_shares(np.array([0.21, 0.59, 0.61, 0.99]), [0.2, 0.6, 1.0]) == [0.25, 0.5, 0.25]


BUDGET_SCHEDULES = st.fixed_dictionaries({
    "name": st.sampled_from(["fixed", "linear", "cosine", "cyclic"]),
    "high": st.sampled_from([0.6, 0.8, 1.0, 1.1]),
    "quantum": st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3]),
    "epochs": st.integers(1, 3),
    "steps_per_epoch": st.integers(2, 30),
    "cooldown": st.integers(0, 1),
})


@settings(max_examples=25, deadline=None)
@given(params=BUDGET_SCHEDULES, budget=st.floats(0.05, 1.0))
def test_budget_picks_the_largest_grid_low_whose_compute_fraction_fits(params, budget):
    flop_model = tiny_flop_model()
    schedule = vitpss.build_schedule(params["name"], low=min(0.2, params["high"]), high=params["high"],
                                     quantum=params["quantum"], epochs=params["epochs"],
                                     steps_per_epoch=params["steps_per_epoch"],
                                     cooldown_epochs=min(params["cooldown"], params["epochs"] - 1))
    candidates = list(budget_candidates(schedule, flop_model.num_patches))

    def fraction(low: float) -> float:
        return flop_model.compute_fraction(vitpss.build_schedule(**{**schedule.to_dict(), "low": low}).rates())

    try:
        chosen = solve_budget(schedule, flop_model, budget)
    except UsageError as err:
        assert "minimum compute fraction" in str(err)
        assert fraction(candidates[0]) > budget
        return
    assert chosen.low in candidates
    assert fraction(chosen.low) <= budget
    index = candidates.index(chosen.low)
    if index + 1 < len(candidates):
        assert fraction(candidates[index + 1]) > budget


def test_budget_result_is_printed_as_flags_and_yaml_that_train_accepts(capsys):
    plan = plan_json(capsys, "--no-measure", "--schedule", "fixed", "--compute-budget", "0.5")
    assert plan["compute_fraction"] <= 0.5
    budget = plan["budget"]
    assert f"--low {budget['low']:g}" in budget["flags"] and "--schedule fixed" in budget["flags"]
    cfg = from_dict(yaml.safe_load(budget["yaml"]))
    assert (cfg.schedule, cfg.low, cfg.quantum) == ("fixed", plan["schedule"]["low"], plan["schedule"]["quantum"])


def test_impossible_budget_is_a_one_line_error_naming_the_minimum_fraction(capsys):
    assert main(["plan", *TINY, *RUN, "--no-measure", "--compute-budget", "0.1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "minimum compute fraction is 0." in err


@pytest.mark.parametrize("args,needle", [
    (["--model", "deit_tiny_patch16_22"], "did you mean 'deit_tiny_patch16_224'"),
    (["--compute-budget", "1.5"], "--compute-budget"),
    (["--schedule", "none", "--compute-budget", "0.8"], "free keep rate"),
])
def test_user_mistakes_are_one_line_errors(capsys, args, needle):
    assert main(["plan", *TINY, *RUN, "--no-measure", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_plan_reads_a_train_config_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("schedule: fixed\nlow: 0.6\nquantum: 0.2\nepochs: 7\n")
    plan = plan_json(capsys, "--no-measure", "--config", str(config), "--low", "0.4")
    assert (plan["schedule"]["name"], plan["schedule"]["low"]) == ("fixed", 0.4)
    assert plan["schedule"]["epochs"] == 3  # RUN's --epochs 3 overrides the file's 7


# --------------------------------------------------------------------------- data pipeline


def test_without_workers_loading_adds_to_the_step_and_with_workers_the_slower_sets_the_pace():
    serial, overlapped = LoaderSpeed(100.0, 0, 10), LoaderSpeed(100.0, 2, 10)  # 0.1 s per batch
    assert serial.step_time(0.3) == pytest.approx(0.4) and serial.wait_share(0.3) == pytest.approx(0.25)
    assert overlapped.step_time(0.3) == pytest.approx(0.3) and overlapped.wait_share(0.3) == 0.0
    assert overlapped.step_time(0.04) == pytest.approx(0.1) and overlapped.wait_share(0.04) == pytest.approx(0.6)


def test_time_fraction_with_a_loader_bounds_every_step_by_it():
    times = StepTimes(64, {13: 0.1, 64: 0.5})
    rates = np.array([0.2, 0.2, 1.0])
    loader = LoaderSpeed(40.0, 2, 8)  # 0.2 s per batch: the 0.2 steps wait, the full ones do not
    assert times.time_fraction(rates, loader) == pytest.approx((0.2 + 0.2 + 0.5) / 1.5)
    assert times.data_wait_share(rates, loader) == pytest.approx(0.2 / 0.9)
    assert times.time_fraction(rates) == pytest.approx(0.7 / 1.5)


def test_plan_with_data_times_the_loader_and_adds_it_to_each_step_without_workers(capsys, tmp_path):
    data = make_image_folder(tmp_path / "images", per_class=4, size=32)
    plan = plan_json(capsys, "--data", str(data), "--workers", "0", "--repeats", "1", "--warmup", "0",
                     "--data-batches", "2", "--in-memory", "off", "--train-subset", "3")  # train's data flags too
    loader = plan["data"]
    assert loader["workers"] == 0 and loader["images_per_s"] > 0
    assert loader["batch_time_s"] == pytest.approx(2 / loader["images_per_s"])
    for row in plan["levels"]:
        assert row["predicted_step_s"] == pytest.approx(row["step_time_s"] + loader["batch_time_s"])
    shares = {row["keep_rate"]: row["share"] for row in plan["levels"]}
    steps = {row["keep_rate"]: row["predicted_step_s"] for row in plan["levels"]}
    assert plan["time_fraction"] == pytest.approx(sum(shares[r] * steps[r] for r in steps) / steps[1.0])


def test_plan_names_data_bound_rates_and_what_to_change(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(vitpss.commands.plan, "measure_loader", lambda *a, **k: LoaderSpeed(1.0, 3, 2))  # 2 s a batch
    data = make_image_folder(tmp_path / "images", per_class=4, size=32)
    assert main(["plan", *TINY, *RUN, "--data", str(data), "--augment", "randaug", "--repeats", "1",
                 "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "data-bound rates  0.2, 0.4, 0.6, 0.8, 1" in out
    assert "--workers; now 3" in out and "--augment light" in out and "--in-memory on" in out


def test_plan_without_data_does_not_time_a_loader(capsys):
    plan = plan_json(capsys, "--repeats", "1", "--warmup", "0")
    assert plan["data"] is None and plan["time_fraction"] == plan["model_time_fraction"]


def test_time_budget_explains_the_epochs_train_would_choose(capsys):
    plan = plan_json(capsys, "--no-measure", "--schedule", "cosine", "--budget", "1")
    budget = plan["budget"]
    assert budget["kind"] == "time" and budget["reference_epochs"] == 3
    assert budget["epochs"] > budget["reference_epochs"] and budget["predicted_fraction"] <= 1.0
    assert plan["schedule"]["epochs"] == budget["epochs"] and budget["basis"] == "FLOPs (--no-measure)"


def test_time_budget_of_all_patches_is_that_share_of_the_epochs(capsys):
    budget = plan_json(capsys, "--no-measure", "--schedule", "none", "--epochs", "10", "--budget", "0.5")["budget"]
    assert budget["epochs"] == 5 and budget["predicted_fraction"] == pytest.approx(0.5)


def test_unreachable_time_budget_is_one_line(capsys):
    assert main(["plan", *TINY, *RUN, "--no-measure", "--budget", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--budget" in err and "not reachable" in err and len(err.splitlines()) == 1
