# Set-up and everyday commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the releases this machine (and CI) install from local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-floors bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

# The default job: a small ViT on the embedded MNIST digits with the default PSS recipe, then the
# dynamic-inference knob of its checkpoint (accuracy and images/s at fewer patches; sweep.png).
# One thread: the model is small, and on shared cores extra threads spin and slow every step.
demo: venv
	$(PY) -m vitpss train --output runs/demo --overwrite --threads 1
	$(PY) -m vitpss sweep --checkpoint runs/demo/best.pt --keep-rates 1.0,0.75,0.5,0.25 --threads 1 --batch-size 256
	@echo "results in runs/demo: summary.json (acc1, time_vs_all_patches), sweep.json + sweep.png (accuracy and images/s per keep rate), train_log.jsonl, val_log.jsonl, best.pt"

test: venv
	$(PY) -m pytest tests

# The lowest timm, transformers, accelerate, open_clip and Lightning that pyproject.toml allows, put in
# $(FLOORS) in front of the venv (whose torch they reuse), then the integration and patching tests on them.
FLOORS := .floors
test-floors: venv
	$(PY) tools/install_floors.py $(FLOORS)
	PYTHONPATH=$(FLOORS):src $(PY) -m pytest tests/test_integrations.py tests/test_patching*.py

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache $(FLOORS)
