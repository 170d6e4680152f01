"""Crash safety: SIGKILL a training run at random points, resume it, and compare bit for bit.

Kill points are events of the uninterrupted run (see ``faulty_vitpss.py``), drawn with a fixed
seed (``VITPSS_FAULT_SEED`` draws others) so that a failure reproduces. Each killed run is resumed
with ``vitpss train --resume DIR`` only; the run that finally completes must hold the same weights,
EMA and optimizer state as the uninterrupted run, and its logs every step and epoch exactly once.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from reliability_helpers import (
    EPOCHS, STEPS_PER_EPOCH, TINY_PRETRAIN, TINY_RUN, assert_bitwise_equal, run_vitpss, step_losses, train_state,
    val_accuracies,
)

from vitpss.checkpoint import read_jsonl

TOTAL = STEPS_PER_EPOCH * EPOCHS
EPOCH_ENDS = range(STEPS_PER_EPOCH, TOTAL + 1, STEPS_PER_EPOCH)
#: Order of the phases among events that happen with the same number of logged steps.
ORDER = ("eval", "save", "replace", "copy", "summary", "forward", "optimizer")
#: Every kill point of the run, by kind: (phase, logged steps when it happens).
EVENTS = {
    "inside a step": [(p, t) for p in ("forward", "optimizer") for t in range(TOTAL)],
    "during evaluation": [("eval", t) for t in EPOCH_ENDS],
    "during a checkpoint write": [(p, t) for p in ("save", "replace") for t in range(1, TOTAL + 1)]
                                 + [("copy", STEPS_PER_EPOCH)],  # best.pt: first epoch (acc may stay flat later)
}


def draw_kill_points(seed: int, count: int = 5) -> list[tuple[str, int]]:
    """``count`` distinct kill points, at least one of each kind, in the order they happen."""
    rng = random.Random(seed)
    points = [rng.choice(events) for events in EVENTS.values()]
    pool = [e for events in EVENTS.values() for e in events if e not in points]
    points += rng.sample(pool, count - len(points))
    return sorted(points, key=lambda e: (e[1], ORDER.index(e[0])))


def assert_completed_like_reference(run_dir, reference_run) -> None:
    assert_bitwise_equal(train_state(run_dir), train_state(reference_run))
    assert [s for s, _ in step_losses(run_dir)] == list(range(TOTAL))  # each step once: no gap, no duplicate
    assert step_losses(run_dir) == step_losses(reference_run)  # and the same loss, bit for bit
    assert val_accuracies(run_dir) == val_accuracies(reference_run)
    assert (run_dir / "summary.json").is_file()
    assert not list(run_dir.glob(".*.tmp")), "temporary files of killed writes are left behind"


def kill_and_resume(run_dir, points: list[tuple[str, int]], command: str = "train", flags=TINY_RUN) -> str:
    """Start the run, SIGKILL it at each point in turn (resuming in between), then resume to the end."""
    args = [command, "--output", str(run_dir), *flags]
    for phase, at in points:
        result = run_vitpss(args, fault=f"{phase}:{at}", run_dir=run_dir)
        assert result.returncode == -9, f"kill point {phase}:{at} was never reached:\n{result.stderr}"
        args = [command, "--resume", str(run_dir)]
    result = run_vitpss(args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_runs_killed_at_five_random_points_resume_bitwise_identically(tmp_path, reference_run):
    seed = int(os.environ.get("VITPSS_FAULT_SEED", "2208"))
    points = draw_kill_points(seed)
    run_dir = tmp_path / "run"
    stdout = kill_and_resume(run_dir, points)
    assert f"resuming from {run_dir}" in stdout, f"seed {seed}: {points}"
    assert_completed_like_reference(run_dir, reference_run)
    assert [r["epoch"] for r in read_jsonl(run_dir / "val_log.jsonl")] == list(range(1, EPOCHS + 1))  # epochs count from 1


@pytest.mark.slow
def test_kills_while_copying_best_and_writing_the_summary_leave_the_same_run_files(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    best_epoch_end = json.loads((reference_run / "summary.json").read_text())["best_epoch"] * STEPS_PER_EPOCH  # from 1
    kill_and_resume(run_dir, [("copy", best_epoch_end), ("summary", TOTAL)])  # the last copy to best.pt
    assert_completed_like_reference(run_dir, reference_run)
    assert_bitwise_equal(train_state(run_dir, "best.pt"), train_state(reference_run, "best.pt"))
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference_run))
    timing = {"train_time_s", "wall_time_s", "cpu_time_s", "train_cpu_time_s", "data_wait_share", "images_per_s"}
    assert {k: v for k, v in summary.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}


@pytest.mark.slow
def test_pretraining_killed_in_a_step_a_save_and_a_validation_resumes_bitwise_identically(tmp_path,
                                                                                          pretrain_reference):
    run_dir = tmp_path / "run"
    stdout = kill_and_resume(run_dir, [("forward", 2), ("save", 5), ("eval", 2 * STEPS_PER_EPOCH)], "pretrain",
                             TINY_PRETRAIN)
    assert f"resuming from {run_dir}" in stdout
    assert_bitwise_equal(train_state(run_dir), train_state(pretrain_reference))
    assert step_losses(run_dir) == step_losses(pretrain_reference)
    assert [s for s, _ in step_losses(run_dir)] == list(range(TOTAL))
    assert read_jsonl(run_dir / "val_log.jsonl") != [] and \
        [(r["epoch"], r["loss"]) for r in read_jsonl(run_dir / "val_log.jsonl")] == \
        [(r["epoch"], r["loss"]) for r in read_jsonl(pretrain_reference / "val_log.jsonl")]
    assert (run_dir / "summary.json").is_file() and not list(run_dir.glob(".*.tmp"))
