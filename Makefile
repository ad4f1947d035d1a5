# Onco-Seg: `make demo` and `make test` set everything up on a fresh machine and are cheap to repeat.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Written after a successful install; pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.oncoseg-installed
# Exact pins: the same CPU-capable build whether pip takes it from local disk or from PyPI.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup system-deps demo test test-fast lint bench

help:
	@echo "make demo       set up $(VENV) and segment the bundled samples into demo-output/"
	@echo "make test       set up $(VENV) and run every test (PYTEST_ARGS=... to pass options)"
	@echo "make test-fast  the tests not marked slow"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make bench      speed and accuracy benchmarks"
	@echo "make setup      only create $(VENV) and install the package (editable, with [dev])"

# Debian's own python3 needs the python3-venv package for `-m venv`; install it when we are root.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { \
		rm -rf $(VENV); \
		if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
			echo "error: '$(PYTHON) -m venv' failed; install python3-venv" >&2; exit 1; \
		fi; \
		apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	}

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --no-input $(TORCH_PINS) -e ".[dev]"
	# MONAI Label's client class, for the compatibility test (its heavy server dependencies are not needed)
	$(BIN)/python -m pip install --no-input --no-deps "monailabel==0.8.5"
	touch $@

# Debian packages for the service/DICOM/GUI tests (Orthanc, dciodvfy, Chromium, Xvfb); installs only what is missing.
system-deps:
	@sh scripts/system-deps.sh

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/oncoseg demo -o demo-output

test: $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP) system-deps
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/student.py
