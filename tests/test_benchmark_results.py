"""benchmarks/results and the scripts that write them: runs named relative to the benchmark, no path of the machine."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MACHINE_PATH = re.compile(r'"(/work|/tmp/|/root|/home/)[^"]*"')


def load(name: str):
    """A benchmarks/ script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.name)
def test_results_hold_no_absolute_path_of_the_machine(path: Path) -> None:
    found = MACHINE_PATH.findall(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name} names paths of the machine that ran it: {sorted(set(found))}"


def test_accuracy_records_paths_relative_to_the_benchmarks_folder(tmp_path: Path) -> None:
    accuracy = load("accuracy")
    aliases = {"CIFAR_ROOT": str(tmp_path / "cifar10")}
    assert accuracy.portable(str(tmp_path / "cifar10"), aliases) == "CIFAR_ROOT"
    assert accuracy.portable(str(BENCH / ".cache" / "study" / "digits8-data")) == ".cache/study/digits8-data"
    assert accuracy.portable(str(tmp_path / "elsewhere" / "data")) == "data"
    assert accuracy.portable("--patch-size") == "--patch-size"
    assert accuracy.portable("1e-3") == "1e-3"


def test_loop_overhead_names_trees_by_label_not_path() -> None:
    loop = load("loop_overhead")
    assert loop.tree_label("before=/some/where/src") == ("before", "/some/where/src")
    assert loop.tree_label("/some/where/main/src") == ("main", "/some/where/main/src")


def write_study(results: Path, runs: list[str]) -> None:
    """A minimal study_<setting>.json of two recipes, one seed each, naming ``runs``."""
    row = {"acc1": 50.0, "train_time_s": 10.0, "cpu_time_s": 8.0, "curve": [40.0, 50.0],
           "curve_time_s": [5.0, 10.0], "gain_last_fifth_smoothed": 0.1, "sweep": {"0.5": 45.0, "0.25": 40.0}}
    data = {"meta": {"setting": "toy", "epochs": 2, "machine": "x86_64 2 cores"},
            "runs": {"baseline": [{**row, "run": runs[0]}],
                     "cosine-random": [{**row, "run": runs[1], "acc1": 49.0, "train_time_s": 6.0}]}}
    (results / "study_toy_s0_2r.json").write_text(json.dumps(data))


def write_step_log(run: Path, cpu_time: float) -> None:
    run.mkdir(parents=True)
    records = [{"data_time": 0.1, "step_time": 0.9, "cpu_time": cpu_time}] * 4
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def report(tmp_path: Path, runs: Path) -> dict:
    study = load("recipe_study")
    out = tmp_path / "report.json"
    study.report(argparse.Namespace(results=str(tmp_path / "results"), runs=str(runs), json=str(out), figure="",
                                    max_time_ratio=0.7, time_settings="toy"))
    return {r["recipe"]: r for r in json.loads(out.read_text())["tables"]["toy"]}


def test_report_reads_step_logs_of_relative_run_names_under_runs(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    write_study(tmp_path / "results", ["baseline_e2_s0", "cosine-random_e2_s0"])
    write_step_log(tmp_path / "runs" / "toy" / "baseline_e2_s0", cpu_time=1.0)
    write_step_log(tmp_path / "runs" / "toy" / "cosine-random_e2_s0", cpu_time=0.5)
    rows = report(tmp_path, tmp_path / "runs")
    assert rows["cosine-random"]["train_cpu_ratio"] == pytest.approx(0.5)
    assert rows["baseline"]["data_wait_share"] == pytest.approx(0.1)


def test_report_without_the_runs_leaves_step_log_columns_empty(tmp_path: Path, capsys) -> None:
    (tmp_path / "results").mkdir()
    write_study(tmp_path / "results", ["baseline_e2_s0", "cosine-random_e2_s0"])
    rows = report(tmp_path, tmp_path / "absent")
    assert rows["cosine-random"]["train_cpu_ratio"] is None
    assert rows["cosine-random"]["data_wait_share"] is None
    assert rows["cosine-random"]["cpu_ratio"] == pytest.approx(1.0)
    assert "no step logs under" in capsys.readouterr().out
