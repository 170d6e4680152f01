# Set-up and everyday commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the releases this machine (and CI) install from local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

# The default job: a small ViT on the embedded MNIST digits with the paper's cyclic schedule.
# One thread: the model is small, and on shared cores extra threads spin and slow every step.
demo: venv
	$(PY) -m vitpss train --output runs/demo --overwrite --threads 1
	@echo "results in runs/demo: summary.json, val_log.jsonl, train_log.jsonl, config.yaml, best.pt, checkpoint.pt"
	@echo "evaluate at half the patches: $(PY) -m vitpss eval --checkpoint runs/demo/best.pt --keep-rate 0.5"

test: venv
	$(PY) -m pytest tests

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
