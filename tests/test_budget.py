"""--budget F: epochs chosen so that a recipe's predicted training time is F x that of E all-patch epochs."""

from __future__ import annotations

import json

import pytest
import yaml
from train_helpers import tiny_run

from vitpss.budget import interpolated, predicted_seconds, scaled_schedule, solve_epochs
from vitpss.checkpoint import read_jsonl
from vitpss.cli import main
from vitpss.schedules import build_schedule


def linear_cost(rate: float) -> float:
    """A step costing a fixed 0.2 plus 0.8 x the keep rate (a ViT-like shape)."""
    return 0.2 + 0.8 * rate


def test_all_patches_get_the_budget_share_of_the_epochs():
    schedule = build_schedule("none", steps_per_epoch=10, epochs=40)
    for fraction, epochs in ((0.5, 20), (0.7, 28), (1.0, 40), (1.5, 60)):
        assert solve_epochs(schedule, linear_cost, fraction).epochs == epochs


def test_cheaper_steps_buy_more_epochs_and_the_next_epoch_would_not_fit():
    schedule = build_schedule("cosine", low=0.2, steps_per_epoch=10, epochs=30)
    choice = solve_epochs(schedule, linear_cost, 1.0)
    assert choice.epochs > 30 and choice.predicted_fraction <= 1.0
    one_more = scaled_schedule(schedule, choice.epochs + 1, 30)
    assert predicted_seconds(one_more, linear_cost) > 30 * 10 * linear_cost(1.0)
    assert solve_epochs(schedule, linear_cost, 0.5).epochs < choice.epochs


def test_cooldown_scales_with_the_epochs():
    schedule = build_schedule("fixed", low=0.5, steps_per_epoch=5, epochs=20, cooldown_epochs=2)
    assert scaled_schedule(schedule, 40, 20).cooldown_epochs == 4
    assert scaled_schedule(schedule, 3, 20).cooldown_epochs == 1  # a recipe with a cooldown keeps one
    assert solve_epochs(schedule, linear_cost, 1.0).cooldown_epochs >= 2


def test_noisy_measurements_never_make_fewer_tokens_cost_more():
    cost = interpolated({0.2: 0.9, 0.6: 0.5, 1.0: 0.7})
    assert cost(0.2) == cost(0.6) == 0.5 and cost(1.0) == 0.7 and cost(0.4) == 0.5


def test_an_unreachable_budget_is_refused():
    schedule = build_schedule("cosine", steps_per_epoch=10, epochs=10)
    with pytest.raises(ValueError, match="not reachable"):
        solve_epochs(schedule, linear_cost, 0.01)


def test_train_with_budget_records_its_choice_and_resumes_without_solving_again(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(tiny_run(whole, "--budget", "1", epochs=3)) == 0
    first_line = capsys.readouterr().out.splitlines()
    assert any(line.startswith("budget 1 x the training time of 3 epochs") for line in first_line)
    config = yaml.safe_load((whole / "config.yaml").read_text())
    assert config["budget_epochs"] == 3 and config["epochs"] >= 3  # steps never cost more than at all patches
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["budget"]["epochs"] == config["epochs"] and summary["budget"]["predicted_fraction"] <= 1.0
    assert summary["budget"]["measured_fraction"] is not None
    # the same run from its resolved config, stopped and resumed: same epochs, same losses
    assert main(["train", "--config", str(whole / "config.yaml"), "--output", str(part), "--max-steps", "3",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    assert not any(line.startswith("budget ") for line in capsys.readouterr().out.splitlines())
    a, b = read_jsonl(whole / "train_log.jsonl"), read_jsonl(part / "train_log.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_budget_run_equals_the_plain_run_of_the_chosen_epochs(tmp_path):
    budget, plain = tmp_path / "budget", tmp_path / "plain"
    assert main(tiny_run(budget, "--budget", "0.6", "--schedule", "cosine", "--seed", "2", epochs=3)) == 0
    epochs = yaml.safe_load((budget / "config.yaml").read_text())["epochs"]
    assert main(tiny_run(plain, "--schedule", "cosine", "--seed", "2", epochs=epochs)) == 0
    # measuring the step costs restored the weights and every random state
    assert [r["loss"] for r in read_jsonl(budget / "train_log.jsonl")] == \
        [r["loss"] for r in read_jsonl(plain / "train_log.jsonl")]


def test_unreachable_budget_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(tiny_run(tmp_path / "run", "--budget", "0.01", epochs=2)) == 2
    err = capsys.readouterr().err.strip()
    assert "--budget" in err and "not reachable" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("budget,tokens,schedule", [("0.5", "resize", "cosine"), ("0.7", "sample", "cosine"),
                                                   ("1", "resize", "cosine")])
def test_a_budget_without_a_recipe_takes_the_studys_choice_for_it(tmp_path, capsys, budget, tokens, schedule):
    assert main(tiny_run(tmp_path / "run", "--budget", budget, "--max-steps", "1")) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["tokens"], config["schedule"]) == (tokens, schedule)
    assert "the budget study's choice" in capsys.readouterr().out


def test_a_named_recipe_flag_keeps_the_users_recipe(tmp_path):
    assert main(tiny_run(tmp_path / "run", "--budget", "0.5", "--schedule", "linear", "--max-steps", "1")) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["tokens"], config["schedule"]) == ("sample", "linear")
