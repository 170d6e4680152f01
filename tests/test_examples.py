"""The scripts in examples/ run end to end (a few steps each) and report accuracy and time."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script, needs", [("lightning_mnist.py", "lightning"), ("hf_trainer_mnist.py", "transformers")])
def test_example_fine_tunes_a_few_steps_and_prints_accuracy_and_time(script, needs):
    pytest.importorskip(needs)
    pytest.importorskip("mlxtend")
    assert len((EXAMPLES / script).read_text().splitlines()) < 80
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(EXAMPLES / script), "--max-steps", "3"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^accuracy 0\.\d{4}  train time \d+\.\d s  steps 3 ", run.stdout, re.MULTILINE), run.stdout
